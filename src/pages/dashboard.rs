//! Page `/dashboard`: live charts of open connections by transport and of
//! messages per second, from the same counters as `/metrics`, streamed every
//! second over Server-Sent Events (`/api/stats`).

use leptos::prelude::*;

use crate::protocol::Stats;

/// Samples kept (one a second: the last minute).
const POINTS: usize = 60;

/// The Dashboard page.
#[component]
pub fn DashboardPage() -> impl IntoView {
    let samples = RwSignal::new(Vec::<Stats>::new());
    let live = RwSignal::new(false);

    #[cfg(feature = "hydrate")]
    {
        let source = client::StatsSource::open(samples, live);
        let source = send_wrapper::SendWrapper::new(source);
        on_cleanup(move || source.close());
    }

    let latest = move || samples.with(|s| s.last().cloned());
    let figure = move |f: fn(&Stats) -> String| move || latest().map_or("—".into(), |s| f(&s));

    view! {
        <section class="page dashboard-page">
            <h1>"Dashboard"</h1>
            <p class=move || if live.get() { "badge badge-live" } else { "badge badge-connecting" }
               role="status" data-testid="dashboard-status">
                {move || if live.get() { "Live" } else { "Connecting" }}
            </p>
            <dl class="figures">
                <div><dt>"SSE streams"</dt><dd data-testid="open-sse">{figure(|s| s.sse.to_string())}</dd></div>
                <div><dt>"WebSockets"</dt><dd data-testid="open-ws">{figure(|s| s.ws.to_string())}</dd></div>
                <div><dt>"Received / s"</dt><dd data-testid="received-rate">{figure(|s| format!("{:.1}", s.received_per_s))}</dd></div>
                <div><dt>"Delivered / s"</dt><dd data-testid="delivered-rate">{figure(|s| format!("{:.1}", s.delivered_per_s))}</dd></div>
                <div><dt>"Broker"</dt><dd data-testid="broker">{figure(|s| s.broker.clone())}</dd></div>
            </dl>
            <Chart
                title="Open connections"
                samples
                series=vec![("SSE", "series-a", |s: &Stats| s.sse as f64), ("WebSocket", "series-b", |s: &Stats| s.ws as f64)]
            />
            <Chart
                title="Messages per second"
                samples
                series=vec![("received", "series-a", |s: &Stats| s.received_per_s), ("delivered", "series-b", |s: &Stats| s.delivered_per_s)]
            />
        </section>
    }
}

/// A line series: label, CSS class, and how to read it from a sample.
type Series = (&'static str, &'static str, fn(&Stats) -> f64);

/// An SVG line chart of the last minute, scaled to its largest value.
#[component]
fn Chart(title: &'static str, samples: RwSignal<Vec<Stats>>, series: Vec<Series>) -> impl IntoView {
    const W: f64 = 300.0;
    const H: f64 = 100.0;
    let readers: Vec<fn(&Stats) -> f64> = series.iter().map(|s| s.2).collect();
    let peak = Memo::new(move |_| {
        samples.with(|s| {
            s.iter()
                .flat_map(|x| readers.iter().map(move |r| r(x)))
                .fold(1.0_f64, f64::max)
        })
    });
    let lines = series
        .into_iter()
        .map(|(label, class, read)| {
            let points = move || {
                let top = peak.get();
                samples.with(|s| {
                    let offset = POINTS.saturating_sub(s.len());
                    s.iter()
                        .enumerate()
                        .map(|(i, x)| {
                            let px = (offset + i) as f64 * W / (POINTS - 1) as f64;
                            let py = H - read(x) / top * (H - 4.0) - 2.0;
                            format!("{px:.1},{py:.1}")
                        })
                        .collect::<Vec<_>>()
                        .join(" ")
                })
            };
            (label, class, points)
        })
        .collect::<Vec<_>>();
    let legend = lines
        .iter()
        .map(|(label, class, _)| view! { <li class=*class>{*label}</li> })
        .collect_view();
    let polylines = lines
        .into_iter()
        .map(|(_, class, points)| view! { <polyline class=class points=points/> })
        .collect_view();
    view! {
        <figure class="chart">
            <figcaption>
                {title} " (max " {move || format!("{:.0}", peak.get())} ")"
                <ul class="legend">{legend}</ul>
            </figcaption>
            <svg viewBox="0 0 300 100" preserveAspectRatio="none" role="img" aria-label=title>
                {polylines}
            </svg>
        </figure>
    }
}

/// The browser side: an EventSource on the stats stream (the browser
/// reconnects it by itself).
#[cfg(feature = "hydrate")]
mod client {
    use leptos::prelude::*;
    use wasm_bindgen::closure::Closure;
    use wasm_bindgen::JsCast;
    use web_sys::{Event, EventSource, MessageEvent};

    use super::POINTS;
    use crate::protocol::{Stats, STATS_PATH};

    type Listener = Closure<dyn FnMut(Event)>;

    /// The open stream and its callbacks.
    pub struct StatsSource {
        source: Option<EventSource>,
        _listeners: Vec<Listener>,
    }

    impl StatsSource {
        /// Opens the stream; samples go into `samples`, state into `live`.
        pub fn open(samples: RwSignal<Vec<Stats>>, live: RwSignal<bool>) -> Self {
            let Ok(source) = EventSource::new(STATS_PATH) else {
                return StatsSource {
                    source: None,
                    _listeners: Vec::new(),
                };
            };
            let on_open: Listener = Closure::new(move |_: Event| live.set(true));
            let on_error: Listener = Closure::new(move |_: Event| live.set(false));
            let on_message: Listener = Closure::new(move |e: Event| {
                let Some(text) = e
                    .dyn_into::<MessageEvent>()
                    .ok()
                    .and_then(|m| m.data().as_string())
                else {
                    return;
                };
                if let Ok(stats) = serde_json::from_str::<Stats>(&text) {
                    live.set(true);
                    samples.update(|s| {
                        s.push(stats);
                        let excess = s.len().saturating_sub(POINTS);
                        s.drain(..excess);
                    });
                }
            });
            source.set_onopen(Some(on_open.as_ref().unchecked_ref()));
            source.set_onerror(Some(on_error.as_ref().unchecked_ref()));
            source.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
            StatsSource {
                source: Some(source),
                _listeners: vec![on_open, on_error, on_message],
            }
        }

        /// Closes the stream.
        pub fn close(&self) {
            if let Some(s) = &self.source {
                s.close();
            }
        }
    }
}
