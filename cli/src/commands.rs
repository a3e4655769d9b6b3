//! The key-value commands: each calls the API with endpoint failover and prints the result as
//! a table (human) or one JSON document (`--output json`).
//!
//! JSON output shows keys and values as UTF-8 text when they are, and always adds
//! `value_base64` so binary values survive.

use std::io::{IsTerminal, Read, Write};
use std::path::Path;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use serde_json::{json, Value};

use crate::client::{Api, Item, Precondition, ScanRange};
use crate::{Failure, Output};

/// Prints results in the chosen format.
pub struct Printer {
    output: Output,
}

impl Printer {
    /// A printer for `output`.
    pub fn new(output: Output) -> Self {
        Printer { output }
    }

    /// Prints `json` in JSON mode, else `table()`'s text.
    fn print(&self, json: Value, table: impl FnOnce() -> Vec<u8>) -> Result<(), Failure> {
        let bytes = match self.output {
            Output::Json => {
                let mut b = serde_json::to_vec_pretty(&json)
                    .map_err(|e| Failure::Other(format!("cannot encode JSON: {e}")))?;
                b.push(b'\n');
                b
            }
            Output::Table => table(),
        };
        let mut stdout = std::io::stdout().lock();
        stdout
            .write_all(&bytes)
            .and_then(|()| stdout.flush())
            .map_err(|e| Failure::Other(format!("cannot write to stdout: {e}")))
    }
}

/// Reads a whole file, or stdin for `-`.
pub fn read_input(path: &Path) -> Result<Bytes, Failure> {
    let mut buf = Vec::new();
    let result = if path == Path::new("-") {
        std::io::stdin().lock().read_to_end(&mut buf).map(drop)
    } else {
        std::fs::File::open(path).and_then(|mut f| f.read_to_end(&mut buf).map(drop))
    };
    result.map_err(|e| Failure::Usage(format!("cannot read `{}`: {e}", path.display())))?;
    Ok(buf.into())
}

/// Text of `bytes` for JSON output: the string if UTF-8, else null.
fn text(bytes: &[u8]) -> Value {
    std::str::from_utf8(bytes).map_or(Value::Null, |s| Value::String(s.into()))
}

/// Bytes shown in a table cell: printable ASCII as is, the rest escaped (`\xNN`, `\n`).
fn cell(bytes: &[u8]) -> String {
    bytes.escape_ascii().to_string()
}

/// `tessera get KEY`.
pub async fn get(api: &Api, out: &Printer, key: &str, eventual: bool) -> Result<(), Failure> {
    let v = api
        .with_failover(|at| api.get_at(at, key.as_bytes(), eventual))
        .await?;
    let json = json!({
        "key": key,
        "version": v.version,
        "value": text(&v.value),
        "value_base64": STANDARD.encode(&v.value),
    });
    out.print(json, || {
        // The raw value, so `tessera get k > file` round-trips; a newline only for humans.
        let mut b = v.value.to_vec();
        if std::io::stdout().is_terminal() {
            b.push(b'\n');
        }
        b
    })
}

/// `tessera put` and `tessera cas`.
pub async fn put(
    api: &Api,
    out: &Printer,
    key: &str,
    value: Bytes,
    ttl: Option<u64>,
    pre: Precondition,
) -> Result<(), Failure> {
    let version = api
        .with_failover(|at| api.put_at(at, key.as_bytes(), value.clone(), ttl, pre))
        .await?;
    out.print(json!({"key": key, "version": version}), || {
        format!("version {version}\n").into_bytes()
    })
}

/// `tessera delete KEY`.
pub async fn delete(
    api: &Api,
    out: &Printer,
    key: &str,
    if_match: Option<u64>,
) -> Result<(), Failure> {
    api.with_failover(|at| api.delete_at(at, key.as_bytes(), if_match))
        .await?;
    out.print(json!({"key": key, "deleted": true}), || {
        b"deleted\n".to_vec()
    })
}

/// `tessera scan`: follows `next` cursors until the range or `limit` is exhausted.
pub async fn scan(
    api: &Api,
    out: &Printer,
    range: &ScanRange,
    limit: Option<u64>,
    page_size: usize,
    eventual: bool,
) -> Result<(), Failure> {
    let mut items: Vec<Item> = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let want = match limit {
            Some(l) => page_size.min((l as usize).saturating_sub(items.len())),
            None => page_size,
        };
        if want == 0 {
            break;
        }
        let (page, next) = api
            .with_failover(|at| api.scan_page_at(at, range, want, cursor.as_deref(), eventual))
            .await?;
        items.extend(page);
        match next {
            Some(n) => cursor = Some(n),
            None => break,
        }
    }
    let json_items: Vec<Value> = items
        .iter()
        .map(|i| {
            json!({
                "key": text(&i.key),
                "key_base64": STANDARD.encode(&i.key),
                "version": i.version,
                "value": text(&i.value),
                "value_base64": STANDARD.encode(&i.value),
            })
        })
        .collect();
    let json = json!({"count": items.len(), "items": json_items});
    out.print(json, || {
        let rows: Vec<[String; 3]> = items
            .iter()
            .map(|i| [cell(&i.key), i.version.to_string(), cell(&i.value)])
            .collect();
        table(["KEY", "VERSION", "VALUE"], &rows).into_bytes()
    })
}

/// `tessera batch FILE`: checks the file is JSON with an `ops` array, then posts it as is
/// (the server validates the ops).
pub async fn batch(api: &Api, out: &Printer, file: &Path) -> Result<(), Failure> {
    let body = read_input(file)?;
    let doc: Value = serde_json::from_slice(&body)
        .map_err(|e| Failure::Usage(format!("`{}` is not valid JSON: {e}", file.display())))?;
    if !doc["ops"].is_array() {
        return Err(Failure::Usage(format!(
            "`{}` must be {{\"ops\":[...]}} (see the README's batch format)",
            file.display()
        )));
    }
    let version = api
        .with_failover(|at| api.batch_at(at, body.clone()))
        .await?;
    out.print(json!({"version": version}), || {
        format!("version {version}\n").into_bytes()
    })
}

/// `tessera cluster`: the members and the shard → owner table.
pub async fn cluster(api: &Api, out: &Printer) -> Result<(), Failure> {
    let view = api.with_failover(|at| api.cluster_at(at)).await?;
    let s = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    };
    let text = || {
        let mut t = format!(
            "mode {}, {} shards, {} members; answered by {} ({})\n\n",
            s(&view["mode"]),
            s(&view["shard_count"]),
            view["members"].as_array().map_or(0, Vec::len),
            s(&view["me"]["id"]),
            s(&view["me"]["url"]),
        );
        let empty = Vec::new();
        let members: Vec<[String; 2]> = view["members"]
            .as_array()
            .unwrap_or(&empty)
            .iter()
            .map(|m| [s(&m["id"]), s(&m["url"])])
            .collect();
        t.push_str(&table(["MEMBER", "URL"], &members));
        t.push('\n');
        let shards: Vec<[String; 4]> = view["shards"]
            .as_array()
            .unwrap_or(&empty)
            .iter()
            .map(|sh| {
                [
                    s(&sh["shard"]),
                    s(&sh["owner"]),
                    s(&sh["url"]),
                    s(&sh["epoch"]),
                ]
            })
            .collect();
        t.push_str(&table(["SHARD", "OWNER", "URL", "EPOCH"], &shards));
        t.into_bytes()
    };
    out.print(view.clone(), text)
}

/// Left-aligned columns separated by two spaces.
fn table<const N: usize>(header: [&str; N], rows: &[[String; N]]) -> String {
    let mut widths = header.map(str::len);
    for row in rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.len());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let parts: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:w$}"))
            .collect();
        out.push_str(parts.join("  ").trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_and_cells_escape() {
        let rows = [["a".to_string(), "10".into()], ["bbb".into(), "2".into()]];
        assert_eq!(table(["K", "V"], &rows), "K    V\na    10\nbbb  2\n");
        assert_eq!(cell(b"x\n\xff"), "x\\n\\xff");
    }
}
