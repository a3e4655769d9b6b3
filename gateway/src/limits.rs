//! Protection from slow and flooding clients, as a middleware ([`admit`]) and the listener's
//! connection settings ([`crate::listener`]).
//!
//! - **In flight**: at most `server.max_in_flight` requests run at once; one more is answered
//!   `503 overloaded` with `Retry-After` at once, without waiting and without touching a shard.
//!   The probes (`/healthz`, `/readyz`) are not counted, so a busy gateway is not taken for a
//!   dead one.
//! - **Body**: the whole request body must arrive within `server.body_timeout` of the request
//!   head; past it, reading the body fails with [`BodyTimeout`] and the handler answers
//!   `408 request_timeout` (and closes the connection). A body that already arrived is never
//!   affected.
//! - Header read time, size and count are bounded by the listener.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::sync::Semaphore;
use tokio::time::{Instant, Sleep};

use crate::error::ApiError;

/// The state of [`admit`].
pub struct Admission {
    slots: Arc<Semaphore>,
    limit: usize,
    body_timeout: Duration,
}

impl Admission {
    /// At most `limit` requests at once; bodies within `body_timeout`.
    pub fn new(limit: usize, body_timeout: Duration) -> Self {
        Admission {
            slots: Arc::new(Semaphore::new(limit)),
            limit,
            body_timeout,
        }
    }
}

/// The middleware: takes an in-flight slot (or answers `503 overloaded`) and bounds the time
/// the body may take. The slot is held until the handler has answered.
pub async fn admit(State(adm): State<Arc<Admission>>, req: Request, next: Next) -> Response {
    let probe = matches!(req.uri().path(), "/healthz" | "/readyz");
    let _slot = if probe {
        None
    } else {
        match Arc::clone(&adm.slots).try_acquire_owned() {
            Ok(slot) => Some(slot),
            Err(_) => return ApiError::overloaded(adm.limit).into_response(),
        }
    };
    let timeout = adm.body_timeout;
    let req = req.map(|body| Body::new(TimedBody::new(body, timeout)));
    next.run(req).await
}

/// The error of a body that did not arrive in time.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {0:?}")]
pub struct BodyTimeout(pub Duration);

/// Whether `e` (or an error it wraps) is a [`BodyTimeout`], and its timeout.
pub fn body_timeout(e: &(dyn std::error::Error + 'static)) -> Option<Duration> {
    std::iter::successors(Some(e), |e| e.source())
        .find_map(|e| e.downcast_ref::<BodyTimeout>().map(|t| t.0))
}

/// A body that fails with [`BodyTimeout`] once its deadline (`timeout` after the request
/// head) passes. The timer is armed only when the body first makes the reader wait, so a
/// request whose body is empty or already here (most of them) never registers one.
struct TimedBody {
    inner: Body,
    timeout: Duration,
    deadline: Instant,
    timer: Option<Pin<Box<Sleep>>>,
}

impl TimedBody {
    fn new(inner: Body, timeout: Duration) -> Self {
        TimedBody {
            inner,
            timeout,
            deadline: Instant::now() + timeout,
            timer: None,
        }
    }
}

impl HttpBody for TimedBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending => {}
            ready => return ready.map(|f| f.map(|r| r.map_err(Into::into))),
        }
        let deadline = this.deadline;
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(BodyTimeout(this.timeout).into()))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
