//! The site (`target/site`: WASM, JS glue, CSS, and everything from public/)
//! served from inside the binary.
//!
//! In release builds rust-embed compiles the files into the binary, so the
//! binary alone serves the whole app; in debug builds (`cargo leptos watch`)
//! it reads them from disk, so rebuilt assets show up without a restart.
//! `make release` writes a `.br` and a `.gz` next to each text or WASM file
//! before the server is compiled; they are served to clients that accept them.

use std::collections::HashMap;
use std::sync::OnceLock;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use leptos::config::LeptosOptions;
use leptos::prelude::ArcStoredValue;
use leptos::WasmSplitManifest;
use rust_embed::RustEmbed;

/// Every file under `target/site`, as built by cargo-leptos.
#[derive(RustEmbed)]
#[folder = "target/site"]
// Lets the crate compile (e.g. for clippy) before the front end is built; the
// server then answers 404 for assets.
#[allow_missing = true]
struct Site;

/// Content codings we have precompressed variants for, best first.
const ENCODINGS: [(&str, &str); 2] = [("br", ".br"), ("gzip", ".gz")];

/// The response for an embedded file at `path`, or `None` if there is none.
pub fn response(path: &str, headers: &HeaderMap) -> Option<Response> {
    let name = path.trim_start_matches('/');
    if name.is_empty() || name.ends_with(".br") || name.ends_with(".gz") {
        return None;
    }
    let plain = Site::get(name)?;
    let accepted = headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let (encoding, file) = ENCODINGS
        .iter()
        .filter(|(coding, _)| accepts(accepted, coding))
        .find_map(|(coding, ext)| Some((Some(*coding), Site::get(&format!("{name}{ext}"))?)))
        .unwrap_or((None, plain.clone()));

    // The variant's own hash, so a cache never mixes encodings.
    let hash = file.metadata.sha256_hash();
    let etag = format!(
        "\"{}\"",
        hash[..12]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    let mut res = if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"))
    {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        file.data.into_owned().into_response()
    };
    let h = res.headers_mut();
    if let Ok(v) = HeaderValue::from_str(plain.metadata.mimetype()) {
        h.insert(header::CONTENT_TYPE, v);
    }
    if let Some(coding) = encoding {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static(coding));
    }
    h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    // File names carry no content hash, so a new release reuses them: caches
    // must revalidate, which the ETag makes a cheap 304.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Some(res)
}

/// Which WASM chunks each lazy page needs, from cargo-leptos's
/// `__wasm_split_manifest.json`, in the form Leptos reads from context: a
/// page rendered on the server then tells the browser to fetch its chunks
/// (`<link rel="preload">`) beside the main module, instead of after it.
/// Leptos would read the file from the site directory on disk, which this
/// self-contained binary does not have; `None` for a build without `--split`.
pub fn split_manifest(options: &LeptosOptions) -> Option<WasmSplitManifest> {
    static MANIFEST: OnceLock<Option<WasmSplitManifest>> = OnceLock::new();
    MANIFEST
        .get_or_init(|| {
            let pkg = &options.site_pkg_dir;
            let file = Site::get(&format!("{pkg}/__wasm_split_manifest.json"))?;
            let chunks: HashMap<String, Vec<String>> = serde_json::from_slice(&file.data).ok()?;
            // The loader's name carries a hash when cargo-leptos hashes files.
            let loader = Site::iter().find_map(|name| {
                let file = name.strip_prefix(&format!("{pkg}/"))?;
                (file.starts_with("__wasm_split.") && file.ends_with(".js"))
                    .then(|| file.to_string())
            })?;
            Some(WasmSplitManifest(ArcStoredValue::new((
                format!("/{pkg}"),
                chunks,
                loader,
            ))))
        })
        .clone()
}

/// Whether an `Accept-Encoding` value accepts `coding` (absent, or q > 0).
fn accepts(accept_encoding: &str, coding: &str) -> bool {
    accept_encoding.split(',').any(|item| {
        let mut parts = item.split(';');
        let name = parts.next().unwrap_or("").trim();
        if !name.eq_ignore_ascii_case(coding) {
            return false;
        }
        parts
            .filter_map(|p| p.trim().strip_prefix("q="))
            .all(|q| q.trim().parse::<f32>().is_ok_and(|q| q > 0.0))
    })
}

#[cfg(test)]
mod tests {
    use super::accepts;

    #[test]
    fn accept_encoding_is_parsed_with_q_values() {
        assert!(accepts("gzip, deflate, br, zstd", "br"));
        assert!(accepts("gzip;q=0.5", "gzip"));
        assert!(!accepts("gzip;q=0, br", "gzip"));
        assert!(!accepts("", "br"));
        assert!(!accepts("gzip", "br"));
    }
}
