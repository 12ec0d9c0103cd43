//! Publishing a notification from the Feed page: the server function and its form.

use leptos::prelude::*;
use server_fn::ServerFn;

use crate::protocol::{ErrorCode, Refusal, MAX_TEXT_CHARS};

/// Publishes `text` as a notification to the feed of every instance, as the
/// signed-in user (same validation and rate limit as chat messages).
#[server(endpoint = "publish_notification")]
pub async fn publish_notification(text: String) -> Result<(), Refusal> {
    use crate::server::{notify, refusal::Refused};
    let parts = use_context::<axum::http::request::Parts>();
    let address = parts
        .as_ref()
        .and_then(|p| p.extensions.get::<crate::server::listener::Admitted>())
        .map(|a| crate::server::admission::address_key(a.client.ip))
        .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
    let headers = parts.map(|p| p.headers).unwrap_or_default();
    let service = use_context::<std::sync::Arc<notify::Notifier>>().ok_or_else(|| Refusal {
        code: ErrorCode::ServerError,
        message: "notifications are not available".into(),
        retry_after_ms: None,
    })?;
    let answered = service.publish_from_session(&headers, &text, address).await;
    answered.map(|_| ()).map_err(|mut refused: Refused| {
        if refused.refusal.code == ErrorCode::Unauthorized {
            // What a signed-out publisher is told (the form offers to sign in).
            refused.refusal.message = "Sign in to publish.".into();
        }
        crate::session::refuse(refused)
    })
}

/// Sends a notification to every feed, as the signed-in user.
///
/// A plain form rather than `ActionForm`: once hydrated, a submit sends the
/// field's text straight to the server function, so the client carries no
/// form decoding (`FormData` into arguments, ≈ 6 KB of the main module);
/// without JavaScript the browser posts the same form to the same URL. The
/// field's text is read from the element, never set from a signal, so
/// hydration keeps anything typed before it.
#[component]
pub fn PublishForm() -> impl IntoView {
    let action = ServerAction::<PublishNotification>::new();
    let field = NodeRef::<leptos::html::Input>::new();
    Effect::new(move |_| {
        if let (Some(Ok(())), Some(field)) = (action.value().get(), field.get_untracked()) {
            field.set_value("");
        }
    });
    let on_submit = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        if let Some(field) = field.get_untracked() {
            action.dispatch(PublishNotification {
                text: field.value(),
            });
        }
    };
    let error = move || match action.value().get() {
        Some(Err(e)) => {
            // Signed out: the way to sign in, rather than an error.
            Some(if e.code == ErrorCode::Unauthorized {
                view! { "Sign in to publish: " <a href="/chat" data-testid="publish-sign-in">"sign in"</a> }
                    .into_any()
            } else {
                e.message.into_any()
            })
        }
        _ => None,
    };
    view! {
        <form class="publish" method="post" action=PublishNotification::url() on:submit=on_submit>
            <label class="visually-hidden" for="publish-text">"Notification"</label>
            <div class="row">
                <input
                    id="publish-text"
                    name="text"
                    data-testid="publish-text"
                    placeholder="Notify everyone…"
                    maxlength=MAX_TEXT_CHARS
                    required
                    node_ref=field
                />
                <button type="submit" disabled=move || action.pending().get()>"Publish"</button>
            </div>
            <p class="error" role="alert">{error}</p>
        </form>
    }
}
