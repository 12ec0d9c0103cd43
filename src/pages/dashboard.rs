//! Page `/dashboard`: live charts of open connections by transport and of
//! messages per second, from the same counters as `/metrics`, streamed every
//! second over Server-Sent Events (`/api/stats`).

use leptos::prelude::*;
use leptos_meta::Title;

use crate::client::events::{self, Received};
use crate::client::{ConnState, StatusBadge};
use crate::protocol::{Stats, STATS_PATH};
use crate::time::format_time;

/// Samples kept (one a second: the last minute).
const POINTS: usize = 60;

/// The Dashboard page.
#[component]
pub fn DashboardPage() -> impl IntoView {
    let samples = RwSignal::new(Vec::<Stats>::new());
    let status = RwSignal::new(ConnState::Connecting);
    let on_event = move |received: Received| {
        if let Ok(stats) = serde_json::from_str::<Stats>(&received.data) {
            samples.update(|s| {
                s.push(stats);
                let excess = s.len().saturating_sub(POINTS);
                s.drain(..excess);
            });
        }
    };
    let stream = events::follow_shared("stats", || STATS_PATH.to_string(), status, on_event);
    on_cleanup(move || stream.stop());

    // Figures are shown only while the stream is live: stale ones would lie.
    let latest = move || {
        status
            .get()
            .is_live()
            .then(|| samples.with(|s| s.last().cloned()))
            .flatten()
    };
    let figure = move |f: fn(&Stats) -> String| move || latest().map_or("—".into(), |s| f(&s));
    let live = Signal::derive(move || status.get().is_live());

    view! {
        <section class="page dashboard-page">
            <Title text="Dashboard"/>
            <h1>"Dashboard"</h1>
            <StatusBadge state=status testid="dashboard-status"/>
            <dl class="figures">
                <div><dt>"SSE streams"</dt><dd data-testid="open-sse">{figure(|s| s.sse.to_string())}</dd></div>
                <div><dt>"WebSockets"</dt><dd data-testid="open-ws">{figure(|s| s.ws.to_string())}</dd></div>
                <div><dt>"Received / s"</dt><dd data-testid="received-rate">{figure(|s| format!("{:.1}", s.received_per_s))}</dd></div>
                <div><dt>"Delivered / s"</dt><dd data-testid="delivered-rate">{figure(|s| format!("{:.1}", s.delivered_per_s))}</dd></div>
                <div><dt>"Broker"</dt><dd class="figure-word" data-testid="broker">{figure(|s| s.broker.clone())}</dd></div>
            </dl>
            <Chart
                title="Open connections"
                samples
                live
                series=vec![("SSE", "series-a", |s: &Stats| s.sse as f64), ("WebSocket", "series-b", |s: &Stats| s.ws as f64)]
            />
            <Chart
                title="Messages per second"
                samples
                live
                series=vec![("received", "series-a", |s: &Stats| s.received_per_s), ("delivered", "series-b", |s: &Stats| s.delivered_per_s)]
            />
        </section>
    }
}

/// A line series: label, CSS class, and how to read it from a sample.
type Series = (&'static str, &'static str, fn(&Stats) -> f64);

/// An SVG line chart of the last minute, scaled to its largest value and
/// filled from the left as samples arrive, with its value range beside it,
/// its time range below, and each series' latest value in the legend.
#[component]
fn Chart(
    title: &'static str,
    samples: RwSignal<Vec<Stats>>,
    /// Lines are drawn only while the stream is live: old ones would lie.
    live: Signal<bool>,
    series: Vec<Series>,
) -> impl IntoView {
    const W: f64 = 300.0;
    const H: f64 = 100.0;
    /// Time between two samples, in ms (one a second).
    const STEP_MS: u64 = 1000;
    let readers: Vec<fn(&Stats) -> f64> = series.iter().map(|s| s.2).collect();
    let peak = Memo::new(move |_| {
        samples.with(|s| {
            s.iter()
                .flat_map(|x| readers.iter().map(move |r| r(x)))
                .fold(1.0_f64, f64::max)
        })
    });
    // The times at the left and right edges (the right one: where the
    // chart fills up, or the newest sample once it has).
    let span = move || {
        samples.with(|s| {
            let first = s.first()?.timestamp;
            let last = first + (POINTS as u64 - 1) * STEP_MS;
            Some((format_time(first, true), format_time(last, true)))
        })
    };
    let lines = series
        .into_iter()
        .map(|(label, class, read)| {
            let points = move || {
                if !live.get() {
                    return String::new();
                }
                let top = peak.get();
                samples.with(|s| {
                    s.iter()
                        .enumerate()
                        .map(|(i, x)| {
                            let px = i as f64 * W / (POINTS - 1) as f64;
                            let py = H - read(x) / top * (H - 4.0) - 2.0;
                            format!("{px:.1},{py:.1}")
                        })
                        .collect::<Vec<_>>()
                        .join(" ")
                })
            };
            let latest = move || {
                live.get()
                    .then(|| samples.with(|s| s.last().map(|x| format_value(read(x)))))
                    .flatten()
                    .unwrap_or_else(|| "—".to_string())
            };
            (label, class, points, latest)
        })
        .collect::<Vec<_>>();
    let legend = lines
        .iter()
        .map(|(label, class, _, latest)| {
            view! { <li class=*class>{*label} " " <span class="legend-value">{*latest}</span></li> }
        })
        .collect_view();
    let polylines = lines
        .into_iter()
        .map(|(_, class, points, _)| view! { <polyline class=class points=points/> })
        .collect_view();
    view! {
        <figure class="chart">
            <figcaption>
                {title}
                <ul class="legend">{legend}</ul>
            </figcaption>
            <div class="plot">
                <div class="y-axis" aria-hidden="true">
                    <span data-testid="chart-max">{move || format_value(peak.get())}</span>
                    <span>"0"</span>
                </div>
                <svg viewBox="0 0 300 100" preserveAspectRatio="none" role="img" aria-label=title>
                    <line class="baseline" x1="0" y1="98" x2="300" y2="98"/>
                    {polylines}
                </svg>
            </div>
            <div class="x-axis" aria-hidden="true">
                <span data-testid="chart-start">{move || span().map(|s| s.0)}</span>
                <span>{move || span().map(|s| s.1)}</span>
            </div>
        </figure>
    }
}

/// A figure as the charts label it: whole numbers as they are, others to
/// one decimal.
fn format_value(v: f64) -> String {
    if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}
