//! The HTTP fallback (`GET /api/chat/stream` + `POST /api/chat/send`): the
//! same chat as a WebSocket, for networks that block WebSockets, with the
//! same checks, and across instances without sticky sessions.

mod support;

use serde_json::{json, Value};
use support::redis::Redis;
use support::ws::{self, token, Client};
use support::{Server, Sse};

/// A fallback client: its stream and its connection's name.
struct Fallback {
    /// The downstream.
    sse: Sse,
    /// The connection's name, from `hello`.
    conn: String,
    /// Its bearer token.
    token: String,
}

impl Fallback {
    /// Opens a stream on `server` as `name`.
    async fn open(server: &Server, name: &str) -> Fallback {
        let token = token(name);
        let bearer = format!("Bearer {token}");
        let mut sse = Sse::open_with(
            &server.url,
            "/api/chat/stream",
            &[("authorization", &bearer)],
        )
        .await;
        let hello = sse.next_event().await.data.expect("a frame");
        assert_eq!(hello["type"], "hello", "{hello}");
        assert!(hello["ping_interval_ms"].as_u64().is_some(), "{hello}");
        let conn = hello["conn"].as_str().expect("conn").to_string();
        Fallback { sse, conn, token }
    }

    /// Posts `frames` for this connection to `server`; returns the status.
    async fn post(&self, server: &Server, frames: Value) -> u16 {
        post(
            server,
            &self.token,
            &json!({ "conn": self.conn, "frames": frames }),
        )
        .await
    }

    /// Joins `room` (posting to `server`); returns the `joined` answer.
    async fn join(&mut self, server: &Server, room: &str) -> Value {
        let status = self
            .post(server, json!([{"type": "join", "room": room}]))
            .await;
        assert_eq!(status, 202);
        let joined = self.recv_type("joined").await;
        assert_eq!(joined["room"], room);
        joined
    }

    /// Says `text` in `room` (posting to `server`), and sees its echo.
    async fn say(&mut self, server: &Server, room: &str, text: &str) {
        let frames = json!([{"type": "message", "room": room, "text": text}]);
        assert_eq!(self.post(server, frames).await, 202);
        assert_eq!(self.recv_type("message").await["text"], text, "the echo");
    }

    /// The next frame of type `ty` down the stream.
    async fn recv_type(&mut self, ty: &str) -> Value {
        loop {
            let data = self.sse.next_event().await.data.expect("a frame");
            if data["type"] == ty {
                return data;
            }
        }
    }
}

/// The status of `GET /api/chat/stream` on `server` with `headers`.
async fn stream_status(server: &Server, headers: &[(&str, &str)]) -> u16 {
    let mut req = reqwest::Client::new().get(format!("{}/api/chat/stream", server.url));
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    req.send()
        .await
        .expect("GET /api/chat/stream")
        .status()
        .as_u16()
}

async fn post(server: &Server, token: &str, body: &Value) -> u16 {
    reqwest::Client::new()
        .post(format!("{}/api/chat/send", server.url))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("POST /api/chat/send")
        .status()
        .as_u16()
}

#[tokio::test]
async fn a_fallback_client_and_a_websocket_client_talk() {
    let server = ws::start(&[]).await;
    let mut fay = Fallback::open(&server, "Fay").await;
    let mut wes = Client::connect(&server, "Wes").await;
    wes.join("general").await;

    let joined = fay.join(&server, "general").await;
    assert_eq!(ws::names(&joined["members"]), ["Fay", "Wes"]);
    fay.say(&server, "general", "over http").await;
    assert_eq!(wes.recv_type("message").await["text"], "over http");

    wes.say("general", "over a socket").await;
    assert_eq!(fay.recv_type("message").await["text"], "over a socket");

    // A ping is answered down the stream, like on a socket.
    assert_eq!(fay.post(&server, json!([{"type": "ping"}])).await, 202);
    fay.recv_type("pong").await;
}

#[tokio::test]
async fn posts_are_checked_like_socket_frames() {
    let server = ws::start(&[]).await;
    let mut fay = Fallback::open(&server, "Fay").await;
    let conn = fay.conn.clone();

    // No token; another user's token; a connection that does not exist.
    let status = reqwest::Client::new()
        .post(format!("{}/api/chat/send", server.url))
        .header("content-type", "application/json")
        .body(json!({"conn": conn, "frames": [{"type": "ping"}]}).to_string())
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 401);
    let body = json!({"conn": conn, "frames": [{"type": "join", "room": "general"}]});
    assert_eq!(post(&server, &token("Mallory"), &body).await, 403);
    let gone = json!({"conn": format!("{conn}0"), "frames": [{"type": "ping"}]});
    assert_eq!(post(&server, &fay.token, &gone).await, 404);

    // A cookie does not let another site post (the cross-site rule).
    let (cookie, _) = ws::sign_in(&server, "Cat").await;
    let status = reqwest::Client::new()
        .post(format!("{}/api/chat/send", server.url))
        .header("cookie", cookie)
        .header("origin", "https://evil.example")
        .header("content-type", "application/json")
        .body(json!({"conn": conn, "frames": [{"type": "ping"}]}).to_string())
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 403);

    // Malformed bodies, too many frames, too large a body.
    assert_eq!(post(&server, &fay.token, &json!({"conn": conn})).await, 400);
    assert_eq!(fay.post(&server, json!([{"type": "shout"}])).await, 400);
    assert_eq!(fay.post(&server, json!([])).await, 400);
    let many: Vec<Value> = (0..17).map(|_| json!({"type": "ping"})).collect();
    assert_eq!(fay.post(&server, Value::Array(many)).await, 400);
    let huge = "x".repeat(20 * 1024);
    assert_eq!(
        fay.post(
            &server,
            json!([{"type": "message", "room": "general", "text": huge}])
        )
        .await,
        413
    );

    // What the connection refuses comes down the stream, as on a socket.
    assert_eq!(
        fay.post(
            &server,
            json!([{"type": "message", "room": "general", "text": "hi"}])
        )
        .await,
        202
    );
    let refused = fay.recv_type("error").await;
    assert_eq!(refused["code"], "not_in_room", "{refused}");
    // Nobody heard of Mallory's attempt: the connection is still Fay's alone.
    let joined = fay.join(&server, "general").await;
    assert_eq!(ws::names(&joined["members"]), ["Fay"]);
}

#[tokio::test]
async fn a_stream_counts_against_the_users_cap_and_its_origin_is_checked() {
    let server = ws::start(&[("PULSE_MAX_SOCKETS_PER_USER", "1")]).await;
    let _fay = Fallback::open(&server, "Fay").await;
    let bearer = format!("Bearer {}", token("Fay"));
    assert_eq!(
        stream_status(&server, &[("authorization", &bearer)]).await,
        429
    );
    let gus = format!("Bearer {}", token("Gus"));
    let foreign = [
        ("authorization", gus.as_str()),
        ("origin", "https://evil.example"),
    ];
    assert_eq!(stream_status(&server, &foreign).await, 403);
}

#[tokio::test]
async fn a_post_that_reaches_another_instance_goes_to_the_stream_over_the_bus() {
    let redis = Redis::start().await;
    let a = ws::start(&[("PULSE_REDIS_URL", &redis.url())]).await;
    let b = ws::start(&[("PULSE_REDIS_URL", &redis.url())]).await;
    a.wait_ready(200).await;
    b.wait_ready(200).await;
    let mut fay = Fallback::open(&a, "Fay").await;
    // Posted to B, acted on by A, which holds the stream.
    fay.join(&b, "tech").await;
    fay.say(&b, "tech", "via b").await;
    // Someone else's post crosses the bus too, but is not acted on.
    let mallory = json!({"conn": fay.conn, "frames": [{"type": "message", "room": "tech", "text": "not mine"}]});
    assert_eq!(post(&b, &token("Mallory"), &mallory).await, 202);
    fay.say(&b, "tech", "still mine").await;
}

#[tokio::test]
async fn an_operator_can_turn_either_transport_off() {
    let ws_only = ws::start(&[("PULSE_TRANSPORTS", "websocket")]).await;
    let bearer = format!("Bearer {}", token("Fay"));
    assert_eq!(
        stream_status(&ws_only, &[("authorization", &bearer)]).await,
        404
    );
    let body = json!({"conn": "x.y", "frames": [{"type": "ping"}]});
    assert_eq!(post(&ws_only, &token("Fay"), &body).await, 404);
    Client::connect(&ws_only, "Fay").await;

    let http_only = ws::start(&[("PULSE_TRANSPORTS", "http")]).await;
    let status = ws::upgrade_status(&ws::ws_url(&http_only), &[("authorization", &bearer)]).await;
    assert_eq!(status, 404);
    Fallback::open(&http_only, "Fay").await;
}

#[tokio::test]
async fn a_user_who_posts_too_fast_is_refused_before_anything_crosses_the_bus() {
    // One message a minute: posts (joins and leaves too) get twice that.
    let server = ws::start(&[("PULSE_RATE_LIMIT_PER_MIN", "1")]).await;
    let fay = Fallback::open(&server, "Fay").await;
    // Names of connections on another instance: each post would cross the bus.
    let elsewhere = json!({"conn": "other.0", "frames": [{"type": "ping"}]});
    assert_eq!(post(&server, &fay.token, &elsewhere).await, 202);
    assert_eq!(post(&server, &fay.token, &elsewhere).await, 202);
    assert_eq!(post(&server, &fay.token, &elsewhere).await, 429);
}
