//! Decoding of what arrives in URLs and headers: percent-encoded binary keys, raw query
//! strings, ETags, cursors. Strict on purpose: malformed input is a 400, never a guess. Also
//! the JSON of a scan page, both ways (gateways merge each other's pages).

use axum::http::HeaderMap;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use bytes::Bytes;
use serde_json::json;
use tessera::{Entry, Precondition, ScanPage};

use crate::error::{ApiError, ErrorCode};

/// Decodes `%XX` escapes into bytes; `+` becomes a space when `plus_is_space` (query strings).
/// Returns `None` on a `%` not followed by two hex digits.
pub fn percent_decode(input: &str, plus_is_space: bool) -> Option<Vec<u8>> {
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hi = (hex[0] as char).to_digit(16)?;
                let lo = (hex[1] as char).to_digit(16)?;
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    Some(out)
}

/// Returns the key of a `/v1/kv/{key}` path, percent-decoded.
pub fn key_from_path(path: &str) -> Result<Bytes, ApiError> {
    let raw = path.strip_prefix("/v1/kv/").unwrap_or_default();
    percent_decode(raw, false).map(Bytes::from).ok_or_else(|| {
        ApiError::bad_request(
            ErrorCode::InvalidKey,
            "the key in the path is not valid percent-encoding",
        )
    })
}

/// A parsed query string: `(name, decoded value)` pairs, names checked against `allowed`.
pub struct Query(Vec<(String, Vec<u8>)>);

impl Query {
    /// Parses `query` (without the `?`). Unknown or repeated parameters are errors.
    pub fn parse(query: Option<&str>, allowed: &[&str]) -> Result<Self, ApiError> {
        let mut pairs: Vec<(String, Vec<u8>)> = Vec::new();
        for part in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (name, value) = part.split_once('=').unwrap_or((part, ""));
            let invalid = || {
                ApiError::bad_request(
                    ErrorCode::InvalidQuery,
                    format!("query parameter `{name}` is not valid percent-encoding"),
                )
            };
            let name = String::from_utf8(percent_decode(name, true).ok_or_else(invalid)?)
                .map_err(|_| invalid())?;
            if !allowed.contains(&name.as_str()) {
                return Err(ApiError::bad_request(
                    ErrorCode::InvalidQuery,
                    format!(
                        "unknown query parameter `{name}`; allowed here: {}",
                        allowed.join(", ")
                    ),
                ));
            }
            if pairs.iter().any(|(n, _)| *n == name) {
                return Err(ApiError::bad_request(
                    ErrorCode::InvalidQuery,
                    format!("query parameter `{name}` is repeated"),
                ));
            }
            let value = percent_decode(value, true).ok_or_else(invalid)?;
            pairs.push((name, value));
        }
        Ok(Query(pairs))
    }

    /// The raw bytes of parameter `name`.
    pub fn bytes(&self, name: &str) -> Option<&[u8]> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    /// Parameter `name` as text.
    pub fn text(&self, name: &str, code: ErrorCode) -> Result<Option<&str>, ApiError> {
        self.bytes(name)
            .map(|v| {
                std::str::from_utf8(v).map_err(|_| {
                    ApiError::bad_request(code, format!("`{name}` must be UTF-8 text"))
                })
            })
            .transpose()
    }

    /// Parameter `name` as a positive integer.
    pub fn positive(&self, name: &str, code: ErrorCode) -> Result<Option<u64>, ApiError> {
        self.text(name, code)?
            .map(|v| match v.parse::<u64>() {
                Ok(n) if n > 0 => Ok(n),
                _ => Err(ApiError::bad_request(
                    code,
                    format!("`{name}` must be a positive integer, got `{v}`"),
                )),
            })
            .transpose()
    }

    /// `consistency=strong|eventual` (default strong).
    pub fn consistency(&self) -> Result<tessera::Consistency, ApiError> {
        match self.text("consistency", ErrorCode::InvalidConsistency)? {
            None | Some("strong") => Ok(tessera::Consistency::Strong),
            Some("eventual") => Ok(tessera::Consistency::Eventual),
            Some(other) => Err(ApiError::bad_request(
                ErrorCode::InvalidConsistency,
                format!("consistency must be `strong` or `eventual`, got `{other}`"),
            )),
        }
    }
}

/// Formats a version as an ETag: `"N"`.
pub fn etag(version: u64) -> String {
    format!("\"{version}\"")
}

/// Reads `If-Match` (`"N"` or `*`) and `If-None-Match` (`*` only). At most one may be given.
pub fn precondition(headers: &HeaderMap) -> Result<Precondition, ApiError> {
    let get = |name: &str| -> Result<Option<String>, ApiError> {
        headers
            .get(name)
            .map(|v| {
                v.to_str().map(|s| s.trim().to_string()).map_err(|_| {
                    ApiError::bad_request(ErrorCode::InvalidEtag, format!("{name} is not ASCII"))
                })
            })
            .transpose()
    };
    match (get("if-match")?, get("if-none-match")?) {
        (Some(_), Some(_)) => Err(ApiError::bad_request(
            ErrorCode::InvalidPrecondition,
            "send either If-Match or If-None-Match, not both",
        )),
        (Some(m), None) if m == "*" => Ok(Precondition::IfExists),
        (Some(m), None) => parse_etag(&m).map(Precondition::IfMatch),
        (None, Some(n)) if n == "*" => Ok(Precondition::IfAbsent),
        (None, Some(n)) => Err(ApiError::bad_request(
            ErrorCode::InvalidPrecondition,
            format!("If-None-Match supports only `*`, got `{n}`"),
        )),
        (None, None) => Ok(Precondition::None),
    }
}

/// Parses an ETag `"N"` into the version N.
pub fn parse_etag(value: &str) -> Result<u64, ApiError> {
    value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or_else(|| {
            ApiError::bad_request(
                ErrorCode::InvalidEtag,
                format!("If-Match must be `*` or a version in quotes, like \"42\"; got `{value}`"),
            )
        })
}

/// Encodes bytes for JSON bodies (standard base64 with padding).
pub fn b64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

/// Decodes a JSON body's base64 field.
pub fn unb64(field: &str, value: &str) -> Result<Bytes, ApiError> {
    STANDARD.decode(value).map(Bytes::from).map_err(|_| {
        ApiError::bad_request(
            ErrorCode::InvalidJson,
            format!("`{field}` must be standard base64"),
        )
    })
}

/// Encodes a scan cursor: the last key returned, base64url.
pub fn cursor(last_key: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(last_key)
}

/// Decodes a scan cursor.
pub fn uncursor(cursor: &[u8]) -> Result<Bytes, ApiError> {
    URL_SAFE_NO_PAD
        .decode(cursor)
        .map(Bytes::from)
        .map_err(|_| {
            ApiError::bad_request(ErrorCode::InvalidCursor, "the cursor is not one we issued")
        })
}

/// A scan page as JSON: `{"items":[{"key","value","version"}],"next":cursor|null}`, keys and
/// values in standard base64. `next` resumes after the last item when there are more.
pub fn page_json(page: &ScanPage) -> serde_json::Value {
    let next = page
        .more
        .then(|| page.items.last().map(|e| cursor(&e.key)))
        .flatten();
    let items: Vec<_> = page
        .items
        .iter()
        .map(|e| json!({ "key": b64(&e.key), "value": b64(&e.value), "version": e.version }))
        .collect();
    json!({ "items": items, "next": next })
}

/// Reads a scan page another gateway rendered with [`page_json`].
pub fn page_from_json(value: &serde_json::Value) -> Result<ScanPage, ApiError> {
    let bad = || ApiError::bad_gateway("malformed scan page");
    let mut items = Vec::new();
    for item in value["items"].as_array().ok_or_else(bad)? {
        items.push(Entry {
            key: unb64("key", item["key"].as_str().ok_or_else(bad)?)?,
            value: unb64("value", item["value"].as_str().ok_or_else(bad)?)?,
            version: item["version"].as_u64().ok_or_else(bad)?,
            expires_at_ms: None,
            written_at_ms: 0,
        });
    }
    Ok(ScanPage {
        items,
        more: !value["next"].is_null(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding_is_strict() {
        assert_eq!(percent_decode("a%2Fb%00", false).unwrap(), b"a/b\0");
        assert_eq!(percent_decode("a+b", false).unwrap(), b"a+b");
        assert_eq!(percent_decode("a+b", true).unwrap(), b"a b");
        assert!(percent_decode("%zz", false).is_none());
        assert!(percent_decode("%4", false).is_none());
    }

    #[test]
    fn scan_pages_round_trip() {
        let entry = |k: &str| Entry {
            key: Bytes::copy_from_slice(k.as_bytes()),
            value: Bytes::from_static(b"\0v"),
            version: 7,
            expires_at_ms: None,
            written_at_ms: 0,
        };
        for more in [false, true] {
            let page = ScanPage {
                items: vec![entry("a"), entry("b/c")],
                more,
            };
            let json = page_json(&page);
            assert_eq!(json["next"].is_string(), more);
            let back = page_from_json(&json).unwrap();
            assert_eq!((back.items, back.more), (page.items, more));
        }
        let err = page_from_json(&json!({"items": [{"key": "YQ=="}]})).unwrap_err();
        let status = axum::response::IntoResponse::into_response(err).status();
        assert_eq!(status, axum::http::StatusCode::BAD_GATEWAY);
    }

    #[test]
    fn etags_parse() {
        assert_eq!(parse_etag("\"42\"").unwrap(), 42);
        assert!(parse_etag("42").is_err());
        assert!(parse_etag("W/\"42\"").is_err());
        assert!(parse_etag("\"-1\"").is_err());
    }
}
