//! The pages whose code is downloaded when first needed: Chat, Rooms and
//! Dashboard. The release build runs cargo-leptos with `--split`, which cuts
//! each `#[wasm_split]` function below (with everything only it uses) into a
//! chunk of its own, so `/` downloads only the Feed's code and the app shell.
//! The server renders every page whole, as before.
//!
//! In the browser a page's chunk is fetched by the route's `preload`, which
//! the router awaits before it hydrates the page (asynchronous hydration,
//! `hydrate_from_async` in `lib.rs`) or shows it after a navigation. Without
//! it the page would be hydrated while its code is still on the way, against
//! HTML it no longer matches.
//!
//! A chunk that cannot be downloaded (the network dropped, a proxy) never
//! leaves a dead page: the split functions are `fallible`, and a failure
//! shows what happened and a way to try again.

use leptos::prelude::*;
use leptos_router::LazyRoute;

use crate::pages::chat::ChatPage;
use crate::pages::dashboard::DashboardPage;
use crate::pages::rooms::RoomsPage;

/// A route whose view is `$page`, split into the chunk `$split`, which
/// `$preload` downloads without showing the page.
// rustfmt re-indents the attribute below further on every run (it is not
// idempotent inside macro_rules), so this macro is laid out by hand.
#[rustfmt::skip]
macro_rules! split_page {
    ($route:ident, $split:ident, $preload:ident, $page:ident) => {
        #[doc = concat!("The route of [`", stringify!($page), "`], its code downloaded on demand.")]
        pub struct $route;

        #[cfg_attr(
            feature = "hydrate",
            leptos::wasm_split::wasm_split(
                $split,
                wasm_split_path = ::leptos::wasm_split,
                preload($preload),
                fallible
            )
        )]
        fn $split() -> Result<AnyView, Unloaded> {
            Ok(view! { <$page/> }.into_any())
        }

        impl LazyRoute for $route {
            fn data() -> Self {
                $route
            }

            async fn preload() {
                #[cfg(feature = "hydrate")]
                loaded($preload).await;
            }

            async fn view(_: Self) -> AnyView {
                // On the server nothing is downloaded: it cannot fail. The
                // page's HTML asks the browser to fetch its chunks early.
                #[cfg(not(feature = "hydrate"))]
                let page = {
                    leptos::prefetch_lazy_fn_on_server(stringify!($split));
                    $split()
                };
                #[cfg(feature = "hydrate")]
                let page = $split().await;
                page.unwrap_or_else(|Unloaded| view! { <Unavailable/> }.into_any())
            }
        }
    };
}

/// A page's chunk could not be downloaded (the details are in the console).
#[derive(Debug)]
pub struct Unloaded;

impl From<leptos::wasm_split::SplitLoaderError> for Unloaded {
    fn from(_: leptos::wasm_split::SplitLoaderError) -> Self {
        Unloaded
    }
}

split_page!(ChatRoute, pulse_chat, preload_chat, ChatPage);
split_page!(RoomsRoute, pulse_rooms, preload_rooms, RoomsPage);
split_page!(
    DashboardRoute,
    pulse_dashboard,
    preload_dashboard,
    DashboardPage
);

/// Downloads a page's chunk with `load`. After a navigation a failure is
/// left to the route's view, which shows [`Unavailable`] in the page's place.
///
/// While the page the server rendered is being hydrated, nothing may be shown
/// in its place: any other view would not match its HTML. So the page stays
/// as the server sent it (its links work without script), the notice goes at
/// the end of `<body>`, outside what is hydrated, and hydration waits for the
/// reload the notice offers.
#[cfg(feature = "hydrate")]
async fn loaded<F>(load: fn() -> F)
where
    F: std::future::Future<Output = Result<(), leptos::wasm_split::SplitLoaderError>>,
{
    if load().await.is_ok() {
        return;
    }
    let hydrating = Owner::current_shared_context().is_some_and(|sc| sc.during_hydration());
    if !hydrating {
        return;
    }
    if let Some(body) = document().body() {
        leptos::mount::mount_to(body, || {
            view! { <div class="unavailable-banner"><Unavailable/></div> }
        })
        .forget();
    }
    std::future::pending::<()>().await
}

/// Says that the page's code could not be downloaded, with a way to try again.
#[component]
fn Unavailable() -> impl IntoView {
    let retry = move |_| {
        // Loads the page afresh: its HTML, the app and the page's chunk.
        #[cfg(feature = "hydrate")]
        let _ = window().location().reload();
    };
    view! {
        <p class="unavailable" role="alert" data-testid="page-unavailable">
            "This page could not be downloaded: the connection may be down. "
            <button type="button" on:click=retry>"Try again"</button>
        </p>
    }
}
