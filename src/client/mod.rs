//! The browser's connections, in one place: the feed's and the dashboard's
//! event streams ([`events`]) and the chat connection ([`chat_link`]), all
//! on gloo-net; what they keep of the stream ([`positions`]) and of one's
//! own messages ([`sends`]); and what the browser remembers ([`stored`]).
//! Nothing here knows the pages: they take signals and give callbacks.
//!
//! Each connection is one async loop driven by `spawn_local`: open, read
//! until it ends, wait (exponential backoff with full jitter, shown as a
//! countdown), open again. The wait ends early when the browser comes back
//! online, when the tab becomes visible again, or when the page is restored
//! from the back/forward cache: there is no reason to sit out a backoff the
//! network no longer imposes. Every connection reports one [`ConnState`],
//! which one [`StatusBadge`] shows on every page.
//!
//! On the server the same functions exist and do nothing, so components
//! carry no `cfg`: a page calls [`events::follow`] and gets a [`Running`]
//! connection in the browser and an inert one while rendering.

pub mod chat_link;
pub mod events;
#[cfg(feature = "hydrate")]
mod liveness;
pub mod positions;
#[cfg(feature = "hydrate")]
mod retry;
pub mod sends;
mod status;
pub mod stored;
#[cfg(feature = "hydrate")]
mod tabs;

pub use status::{ConnState, StatusBadge};

/// A connection's loop; it stops when [`Running::stop`] is called (a page
/// calls it from `on_cleanup`).
pub struct Running {
    /// Aborts the loop (dropping its socket closes it). `None` on the server.
    #[cfg(feature = "hydrate")]
    abort: futures::future::AbortHandle,
}

impl Running {
    /// Runs `work` until it ends or the connection is stopped.
    #[cfg(feature = "hydrate")]
    fn spawn(work: impl std::future::Future<Output = ()> + 'static) -> Running {
        let (abort, registration) = futures::future::AbortHandle::new_pair();
        leptos::task::spawn_local(async move {
            let _ = futures::future::Abortable::new(work, registration).await;
        });
        Running { abort }
    }

    /// Nothing to run: on the server.
    #[cfg(not(feature = "hydrate"))]
    fn inert() -> Running {
        Running {}
    }

    /// Stops the loop and closes its connection.
    pub fn stop(&self) {
        #[cfg(feature = "hydrate")]
        self.abort.abort();
    }
}
