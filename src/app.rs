//! The HTML shell, the app shell (header and navigation) and the routes.

use leptos::prelude::*;
use leptos_meta::{provide_meta_context, MetaTags, Title};
use leptos_router::components::{Route, Router, Routes, A};
use leptos_router::{path, Lazy, SsrMode};

use crate::pages::feed::FeedPage;
use crate::pages::split::{ChatRoute, DashboardRoute, RoomsRoute};

/// The HTML document around the app, rendered on the server.
pub fn shell(options: LeptosOptions) -> impl IntoView {
    #[cfg(feature = "ssr")]
    crate::server::security::send_content_security_policy(&options);
    view! {
        <!DOCTYPE html>
        <html lang="en">
            <head>
                <meta charset="utf-8"/>
                <meta name="viewport" content="width=device-width, initial-scale=1"/>
                <meta name="description" content="pulse: real-time feed, chat and rooms"/>
                <link rel="icon" href="/favicon.svg" type="image/svg+xml"/>
                // In the shell, not the app: it never changes, so nothing in
                // the browser needs to hydrate it.
                <link id="leptos" rel="stylesheet" href="/pkg/pulse.css"/>
                <AutoReload options=options.clone()/>
                <HydrationScripts options/>
                <MetaTags/>
            </head>
            <body>
                <App/>
            </body>
        </html>
    }
}

/// The app: header with navigation, and the page for the current route.
#[component]
pub fn App() -> impl IntoView {
    provide_meta_context();
    view! {
        // Each page names itself; the site's name follows.
        <Title formatter=|page: String| format!("{page} · pulse")/>
        <Router>
            <header class="topbar">
                <a class="brand" href="/">"pulse"</a>
                <nav aria-label="Main">
                    <A href="/" exact=true>"Feed"</A>
                    <A href="/chat">"Chat"</A>
                    <A href="/rooms">"Rooms"</A>
                    <A href="/dashboard">"Dashboard"</A>
                </nav>
            </header>
            <main>
                <Routes fallback=NotFound>
                    // Async: the HTML is sent once the latest events are in it, so
                    // the feed is complete without JavaScript (streamed Suspense
                    // content would need the script to be swapped in).
                    <Route path=path!("/") view=FeedPage ssr=SsrMode::Async/>
                    // The other pages' code is downloaded when first needed.
                    <Route path=path!("/chat") view={Lazy::<ChatRoute>::new()}/>
                    // One route for `/rooms` and `/rooms/:room`: switching rooms
                    // changes its parameter, never the page (two routes would
                    // rebuild it, socket and focus included, on the first switch).
                    <Route path=path!("/rooms/:room?") view={Lazy::<RoomsRoute>::new()}/>
                    <Route path=path!("/dashboard") view={Lazy::<DashboardRoute>::new()}/>
                </Routes>
            </main>
        </Router>
    }
}

/// Shown for any path that is neither a page nor an asset.
#[component]
fn NotFound() -> impl IntoView {
    view! {
        <section class="page">
            <Title text="Not found"/>
            <h1>"Not found"</h1>
            <p>"There is no page here. " <a href="/">"Back to the feed"</a></p>
        </section>
    }
}
