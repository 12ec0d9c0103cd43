//! Publishing a notification from the Feed page: the server function and its form.

use leptos::prelude::*;

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
#[component]
pub fn PublishForm() -> impl IntoView {
    let action = ServerAction::<PublishNotification>::new();
    let text = RwSignal::new(String::new());
    Effect::new(move |_| {
        if let Some(Ok(())) = action.value().get() {
            text.set(String::new());
        }
    });
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
        <ActionForm action attr:class="publish">
            <label class="visually-hidden" for="publish-text">"Notification"</label>
            <div class="row">
                <input
                    id="publish-text"
                    name="text"
                    data-testid="publish-text"
                    placeholder="Notify everyone… (signed-in users)"
                    maxlength=MAX_TEXT_CHARS
                    required
                    prop:value=move || text.get()
                    on:input=move |ev| text.set(event_target_value(&ev))
                />
                <button type="submit" disabled=move || action.pending().get()>"Publish"</button>
            </div>
            <p class="error" role="alert">{error}</p>
        </ActionForm>
    }
}
