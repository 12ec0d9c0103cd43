//! The release binary serves the whole site from inside itself: pages
//! rendered on the server, and the embedded, precompressed assets.

mod support;

use pulse::server::config::Cli;
use support::Server;

#[tokio::test]
async fn the_feed_page_is_rendered_with_the_latest_events() {
    let server = Server::start(&[("PULSE_FEED_INTERVAL", "20ms")]).await;
    // Wait until the ticker has published, then render.
    let mut sse = support::Sse::open(&server.url, None).await;
    sse.next_update().await;
    let res = reqwest::get(&server.url).await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let html = res.text().await.unwrap();
    assert!(html.contains("/pkg/pulse.js"), "hydration script");
    assert!(html.contains("/pkg/pulse.css"), "stylesheet");
    assert!(html.contains("event-update"), "rendered events: {html}");
}

#[tokio::test]
async fn unknown_paths_get_the_apps_404_page() {
    let server = Server::start(&[]).await;
    let res = reqwest::get(format!("{}/no/such/page", server.url))
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    assert!(res.text().await.unwrap().contains("Not found"));
}

#[tokio::test]
async fn assets_are_embedded_precompressed_and_revalidated() {
    let server = Server::start(&[]).await;
    let client = reqwest::Client::new();
    let get = |path: &str, encoding: &str| {
        client
            .get(format!("{}{path}", server.url))
            .header("accept-encoding", encoding)
            .send()
    };

    for (path, mime) in [
        ("/pkg/pulse.wasm", "application/wasm"),
        ("/pkg/pulse.js", "text/javascript"),
        ("/pkg/pulse.css", "text/css"),
        ("/favicon.svg", "image/svg+xml"),
    ] {
        let plain = get(path, "identity").await.unwrap();
        assert_eq!(plain.status(), 200, "{path}");
        assert_eq!(plain.headers()["content-type"], mime, "{path}");
        assert!(plain.headers().get("content-encoding").is_none());
        let plain_len = plain.bytes().await.unwrap().len();

        for (accept, coding) in [("gzip, deflate, br", "br"), ("gzip", "gzip")] {
            let res = get(path, accept).await.unwrap();
            assert_eq!(res.status(), 200);
            assert_eq!(res.headers()["content-encoding"], coding, "{path} {accept}");
            assert_eq!(res.headers()["content-type"], mime);
            assert_eq!(res.headers()["vary"], "accept-encoding");
            assert_eq!(res.headers()["cache-control"], "no-cache");
            let etag = res.headers()["etag"].clone();
            let len = res.bytes().await.unwrap().len();
            if path.ends_with(".wasm") || path.ends_with(".js") {
                assert!(len < plain_len, "{path}: {coding} {len} < {plain_len}");
            }
            let revalidated = client
                .get(format!("{}{path}", server.url))
                .header("accept-encoding", accept)
                .header("if-none-match", etag)
                .send()
                .await
                .unwrap();
            assert_eq!(revalidated.status(), 304, "{path} revalidates");
        }
    }
}

#[test]
fn every_setting_is_in_help_config_and_the_readme() {
    let pulse = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_pulse"))
            .args(args)
            .env(
                "PULSE_JWT_SECRET",
                "a secret nobody may see in pulse config",
            )
            .output()
            .unwrap();
        assert!(out.status.success(), "pulse {args:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let help = pulse(&["--help"]);
    let config = pulse(&["config"]);
    let readme = include_str!("../README.md");
    // The settings as declared: one field of AppSettings each.
    let command = <Cli as clap::CommandFactory>::command();
    let settings: Vec<_> = command
        .get_arguments()
        .filter_map(|arg| Some((arg, arg.get_env()?.to_str()?.to_string())))
        .collect();
    assert!(settings.len() >= 27, "{} settings", settings.len());
    for (arg, var) in settings {
        let key = arg.get_long().unwrap();
        assert!(help.contains(&var), "--help mentions {var}");
        let row = format!("| `{var}` | ");
        assert!(readme.contains(&row), "the README's table has {var}");
        if let Some(default) = arg.get_default_values().first() {
            let row = format!("{row}`{}`", default.to_str().unwrap());
            assert!(
                readme.contains(&row),
                "the README gives {var}'s default: {row}"
            );
        }
        assert!(
            config.contains(&format!("\n{key} = ")) || arg.is_hide_env_values_set(),
            "pulse config prints {key}"
        );
    }
    assert!(help.contains("LEPTOS_SITE_ADDR"));
    assert!(readme.contains("| `LEPTOS_SITE_ADDR` |"));
    assert!(
        !config.contains("nobody may see"),
        "pulse config never prints the secret"
    );
}

#[test]
fn invalid_settings_are_refused_with_a_clear_message() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pulse"))
        .env("PULSE_FEED_BACKLOG", "5")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("PULSE_FEED_BACKLOG"), "{err}");
}

#[tokio::test]
async fn an_unknown_setting_is_reported_not_silently_ignored() {
    // The name a setting had before durations were typed: an operator who
    // still sets it must learn that it does nothing.
    let mut server = Server::start(&[("PULSE_FEED_INTERVAL_MS", "5")]).await;
    let line = server.wait_log("ignoring PULSE_FEED_INTERVAL_MS").await;
    assert!(line.contains("no such setting"), "{line}");
}

#[tokio::test]
async fn pages_carry_a_csp_with_their_scripts_nonce_and_the_security_headers() {
    let server = Server::start(&[]).await;
    for path in ["/", "/chat", "/rooms", "/dashboard", "/no/such/page"] {
        let res = reqwest::get(format!("{}{path}", server.url)).await.unwrap();
        let h = res.headers().clone();
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(h["referrer-policy"], "same-origin", "{path}");
        assert_eq!(h["x-frame-options"], "DENY", "{path}");
        let csp = h["content-security-policy"].to_str().unwrap().to_string();
        for directive in [
            "default-src 'self'",
            "'wasm-unsafe-eval'",
            "connect-src 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(csp.contains(directive), "{path}: {directive} in {csp}");
        }
        let nonce = csp
            .split("'nonce-")
            .nth(1)
            .and_then(|rest| rest.split('\'').next())
            .expect("a nonce in the policy");
        let html = res.text().await.unwrap();
        // Every inline script of the page carries the policy's nonce.
        let scripts = html.matches("<script").count();
        assert!(scripts > 0, "{path}: scripts");
        assert_eq!(
            html.matches(&format!("nonce=\"{nonce}\"")).count(),
            html.matches("nonce=\"").count(),
            "{path}: every nonce is the policy's"
        );
        assert!(html.contains(&format!("nonce=\"{nonce}\"")), "{path}");
    }
    // Each response has its own nonce.
    let csp = |r: reqwest::Response| r.headers()["content-security-policy"].clone();
    let one = csp(reqwest::get(&server.url).await.unwrap());
    let two = csp(reqwest::get(&server.url).await.unwrap());
    assert_ne!(one, two);
    // Assets and APIs carry the headers too.
    let res = reqwest::get(format!("{}/healthz", server.url))
        .await
        .unwrap();
    assert_eq!(res.headers()["x-content-type-options"], "nosniff");
}

#[test]
fn the_readmes_architecture_map_matches_the_tree() {
    let readme = include_str!("../README.md");
    let start = readme
        .find("## Architecture")
        .expect("an architecture section");
    let map = &readme[start..];
    let map = &map[map.find("```").unwrap() + 3..];
    let map = &map[..map.find("```").unwrap()];
    let mut files = Vec::new();
    let mut dirs = vec![std::path::PathBuf::from("src")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    assert!(files.len() > 30, "{files:?}");
    let names: Vec<String> = files
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for file in &files {
        let name = file.file_name().unwrap().to_string_lossy();
        // A module's mod.rs is its directory.
        let shown = if name == "mod.rs" {
            let dir = file
                .parent()
                .unwrap()
                .file_name()
                .unwrap()
                .to_string_lossy();
            format!("{dir}/")
        } else {
            name.into_owned()
        };
        assert!(
            map.contains(&shown),
            "the README's map shows {}",
            file.display()
        );
    }
    // And nothing that is not there.
    for word in map.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.')) {
        if word.ends_with(".rs") {
            assert!(
                names.iter().any(|n| n == word),
                "{word} in the README's map exists"
            );
        }
    }
}

#[tokio::test]
async fn a_lazy_page_asks_for_its_chunks_beside_the_main_module() {
    // (In this process Leptos could also find the manifest on disk; the
    // binary run from an empty directory is checked in split.spec.ts.)
    let server = Server::start(&[]).await;
    let get = async |path: &str| {
        let res = reqwest::get(format!("{}{path}", server.url)).await.unwrap();
        res.text().await.unwrap()
    };
    let manifest: serde_json::Value =
        serde_json::from_str(&get("/pkg/__wasm_split_manifest.json").await).unwrap();
    for (path, split) in [
        ("/chat", "pulse_chat"),
        ("/rooms/tech", "pulse_rooms"),
        ("/dashboard", "pulse_dashboard"),
    ] {
        let html = get(path).await;
        let chunks = manifest[split].as_array().expect("the page's chunks");
        assert!(!chunks.is_empty());
        for chunk in chunks {
            let href = format!("href=\"/pkg/{}.wasm\"", chunk.as_str().unwrap());
            let link = html
                .split("<link")
                .find(|tag| tag.contains(&href))
                .unwrap_or_else(|| panic!("{path} preloads {href}: {html}"));
            assert!(link.contains("rel=\"preload\""), "{link}");
        }
    }
    // The feed's own page preloads no other page's code.
    let html = get("/").await;
    assert!(!html.contains("split_pulse"), "{html}");
}
