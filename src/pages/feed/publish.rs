//! Publishing a notification from the Feed page: the server function and its form.

use leptos::prelude::*;
use server_fn::ServerFn;

use crate::protocol::MAX_TEXT_CHARS;

/// What a signed-out publisher is told (the form then offers to sign in).
const SIGN_IN_FIRST: &str = "Sign in to publish.";

/// Publishes `text` as a notification to the feed of every instance, as the
/// signed-in user (same validation and rate limit as chat messages).
#[server(endpoint = "publish_notification")]
pub async fn publish_notification(text: String) -> Result<(), ServerFnError> {
    use crate::server::notify;
    let headers = use_context::<axum::http::request::Parts>()
        .map(|p| p.headers)
        .unwrap_or_default();
    let service = use_context::<std::sync::Arc<notify::Notifier>>()
        .ok_or_else(|| ServerFnError::new("notifications are not available"))?;
    service
        .publish_from_session(&headers, &text)
        .await
        .map(|_| ())
        .map_err(|e| {
            if let Some(res) = use_context::<leptos_axum::ResponseOptions>() {
                res.set_status(e.status());
            }
            match e {
                notify::NotifyError::Unauthorized(_) => ServerFnError::new(SIGN_IN_FIRST),
                e => ServerFnError::new(e.message()),
            }
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
            let message = crate::session::error_message(&e);
            // Signed out: the way to sign in, rather than an error.
            Some(if message == SIGN_IN_FIRST {
                view! { "Sign in to publish: " <a href="/chat" data-testid="publish-sign-in">"sign in"</a> }
                    .into_any()
            } else {
                message.into_any()
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
                    placeholder="Notify everyone… (signed-in users)"
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
