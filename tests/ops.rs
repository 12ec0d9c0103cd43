//! Operations: JSON logs whose per-connection lines carry the connection's id
//! and user.

mod support;

use serde_json::Value;
use support::{ws, WAIT};

#[tokio::test]
async fn json_logs_carry_connection_id_and_user() {
    let mut server = ws::start(&[
        ("PULSE_LOG_FORMAT", "json"),
        ("RUST_LOG", "info,pulse=debug"),
    ])
    .await;
    let _socket = ws::Client::connect(&server, "Ada").await;
    loop {
        // Every line is a JSON object.
        let line = tokio::time::timeout(WAIT, server.logs.recv())
            .await
            .expect("a log line")
            .expect("the server is running");
        let v: Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        if v["span"]["name"] == "ws" {
            assert_eq!(v["span"]["user"], ws::id_of("Ada"), "{v}");
            assert!(v["span"]["conn"].as_u64().is_some(), "{v}");
            assert!(v["level"].is_string() && v["timestamp"].is_string(), "{v}");
            break;
        }
    }
}
