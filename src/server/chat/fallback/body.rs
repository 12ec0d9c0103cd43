//! The SSE body of a fallback stream: its carrier's frames as `data:`
//! lines, and those of the connections attached to it as [`TAB_EVENT`]
//! events, until the carrier's own close.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::ws::Message;
use futures::stream::{self, SelectAll};
use futures::StreamExt;
use tokio::sync::mpsc;

use super::super::outbox::Queue;
use crate::protocol::TAB_EVENT;

/// A connection attached to a stream: its tab and its outbound queue.
pub(super) struct Attached {
    /// Tags its frames.
    pub tab: Arc<str>,
    /// Its frames.
    pub queue: Queue,
}

/// The body of a carrier's stream.
pub(super) fn body(
    queue: Queue,
    attached: mpsc::Receiver<Attached>,
) -> impl futures::Stream<Item = Result<Bytes, Infallible>> + Send + 'static {
    let own = frames(None, queue);
    let start = (SelectAll::from_iter([own]), attached);
    stream::unfold(start, |(mut all, mut attached)| async move {
        loop {
            tokio::select! {
                // Only the carrier's own frames end the stream; an attached
                // connection that ends just leaves it.
                frame = all.next() => match frame? {
                    (None, Message::Text(text)) => {
                        let frame = Bytes::from(format!("data: {}\n\n", text.as_str()));
                        return Some((Ok(frame), (all, attached)));
                    }
                    (None, Message::Close(_)) => return None,
                    (Some(tab), Message::Text(text)) => {
                        // A tab id needs no escaping (see is_valid_tab), and
                        // the text is a JSON object already.
                        let frame = Bytes::from(format!(
                            "event: {TAB_EVENT}\ndata: {{\"tab\":\"{tab}\",\"msg\":{}}}\n\n",
                            text.as_str()
                        ));
                        return Some((Ok(frame), (all, attached)));
                    }
                    _ => continue,
                },
                Some(Attached { tab, queue }) = attached.recv() => all.push(frames(Some(tab), queue)),
            }
        }
    })
}

/// One connection's outbound frames, tagged with its tab if it is attached.
/// Its stream ends after its close frame.
fn frames(
    tab: Option<Arc<str>>,
    queue: Queue,
) -> stream::BoxStream<'static, (Option<Arc<str>>, Message)> {
    stream::unfold(Some(queue), move |queue| {
        let tab = tab.clone();
        async move {
            let mut queue = queue?;
            let frame = queue.recv().await?;
            let next = (!matches!(frame, Message::Close(_))).then_some(queue);
            Some(((tab, frame), next))
        }
    })
    .boxed()
}
