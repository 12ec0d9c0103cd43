//! Request bodies that stop arriving: a body that makes no progress for
//! `PULSE_BODY_TIMEOUT` fails with [`BodyStalled::Timeout`] (answered 408,
//! and the connection closed), and one still awaited when the server shuts
//! down fails at once with [`BodyStalled::ShuttingDown`], so that no client
//! can hold a request open by trickling its body, nor hold a deploy.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// Why a request body ended before its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyStalled {
    /// Nothing arrived for the body timeout.
    Timeout,
    /// The server is shutting down.
    ShuttingDown,
}

impl std::fmt::Display for BodyStalled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BodyStalled::Timeout => "the request body stopped arriving",
            BodyStalled::ShuttingDown => "the server is shutting down",
        })
    }
}

impl std::error::Error for BodyStalled {}

/// Whether `error` (or what caused it) is a stalled body.
pub fn stalled(error: &(dyn std::error::Error + 'static)) -> Option<BodyStalled> {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if let Some(stalled) = e.downcast_ref::<BodyStalled>() {
            return Some(*stalled);
        }
        cause = e.source();
    }
    None
}

/// A request body under the body timeout.
pub struct Watched {
    /// The body as hyper reads it.
    inner: Incoming,
    /// How long it may make no progress.
    timeout: Duration,
    /// When it fails unless something arrives; armed while it waits.
    deadline: Pin<Box<Sleep>>,
    /// Resolves at shutdown.
    shutdown: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl Watched {
    pub fn new(inner: Incoming, timeout: Duration, shutdown: &CancellationToken) -> Watched {
        Watched {
            inner,
            timeout,
            deadline: Box::pin(tokio::time::sleep(timeout)),
            shutdown: Box::pin(shutdown.clone().cancelled_owned()),
        }
    }
}

impl http_body::Body for Watched {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                // Progress: the allowance starts again.
                let next = Instant::now() + this.timeout;
                this.deadline.as_mut().reset(next);
                return Poll::Ready(Some(Ok(frame)));
            }
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => {}
        }
        if this.shutdown.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(BodyStalled::ShuttingDown.into())));
        }
        if this.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(BodyStalled::Timeout.into())));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
