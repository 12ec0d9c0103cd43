//! Operations: JSON logs whose per-connection lines carry the connection's id
//! and user.

mod support;

use std::process::Stdio;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{ChildStdout, Command};

#[tokio::test]
async fn json_logs_carry_connection_id_and_user() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pulse"))
        .env("LEPTOS_SITE_ADDR", "127.0.0.1:0")
        .env("PULSE_LOG_FORMAT", "json")
        .env("PULSE_JWT_SECRET", support::ws::SECRET)
        .env("RUST_LOG", "info,pulse=debug")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let url = loop {
        let v = next_json(&mut lines).await;
        let message = v["fields"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if let Some(url) = message.strip_prefix("listening on ") {
            break url.to_string();
        }
    };
    let ws_url = format!("{}/ws", url.replacen("http://", "ws://", 1));
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        ws_url.as_str(),
    )
    .unwrap();
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {}", support::ws::token("Ada"))
            .parse()
            .unwrap(),
    );
    let (_socket, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    loop {
        let v = next_json(&mut lines).await;
        if v["span"]["name"] == "ws" {
            assert_eq!(v["span"]["user"], "test-ada", "{v}");
            assert!(v["span"]["conn"].as_u64().is_some(), "{v}");
            assert!(v["level"].is_string() && v["timestamp"].is_string(), "{v}");
            break;
        }
    }
}

/// The next log line, which must be a JSON object.
async fn next_json(lines: &mut Lines<BufReader<ChildStdout>>) -> Value {
    let line = tokio::time::timeout(support::WAIT, lines.next_line())
        .await
        .expect("a log line")
        .unwrap()
        .expect("the server is running");
    serde_json::from_str::<Value>(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
}
