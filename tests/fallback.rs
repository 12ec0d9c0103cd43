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
        let frames =
            json!([{"type": "message", "room": room, "text": text, "client_id": ws::client_id()}]);
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

/// Waits until posts to `conn` are answered `status`.
async fn eventually_status(server: &Server, token: &str, conn: &str, status: u16) {
    let ping = json!({ "conn": conn, "frames": [{"type": "ping"}] });
    support::eventually(&format!("posts to be answered {status}"), async || {
        (post(server, token, &ping).await == status).then_some(())
    })
    .await
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
            json!([{"type": "message", "room": "general", "text": huge, "client_id": "c1"}])
        )
        .await,
        413
    );

    // What the connection refuses comes down the stream, as on a socket.
    assert_eq!(
        fay.post(
            &server,
            json!([{"type": "message", "room": "general", "text": "hi", "client_id": "c2"}])
        )
        .await,
        202
    );
    let refused = fay.recv_type("nack").await;
    assert_eq!(refused["code"], "not_in_room", "{refused}");
    assert_eq!(refused["client_id"], "c2", "{refused}");
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
    let mallory = json!({"conn": fay.conn, "frames": [{"type": "message", "room": "tech", "text": "not mine", "client_id": "m1"}]});
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
    // Names of connections on another instance: each post would cross to
    // it (there is none here, so each is answered 404 once it has tried).
    let elsewhere = json!({"conn": "other.0", "frames": [{"type": "ping"}]});
    assert_eq!(post(&server, &fay.token, &elsewhere).await, 404);
    assert_eq!(post(&server, &fay.token, &elsewhere).await, 404);
    assert_eq!(post(&server, &fay.token, &elsewhere).await, 429);
}

impl Fallback {
    /// Attaches a connection for `tab` to this stream (posting to `server`);
    /// returns its name, from the `hello` that comes down this stream.
    async fn attach(&mut self, server: &Server, tab: &str) -> String {
        let status = self
            .post(server, json!([{"type": "attach", "tab": tab}]))
            .await;
        assert_eq!(status, 202);
        let hello = self.recv_tab(tab, "hello").await;
        assert!(hello["ping_interval_ms"].as_u64().is_some(), "{hello}");
        hello["conn"].as_str().expect("conn").to_string()
    }

    /// Posts `frames` for the attached connection `conn` (same user).
    async fn post_as(&self, server: &Server, conn: &str, frames: Value) -> u16 {
        post(
            server,
            &self.token,
            &json!({ "conn": conn, "frames": frames }),
        )
        .await
    }

    /// Posts a message in `room` for the attached connection `conn`.
    async fn say_as(&self, server: &Server, conn: &str, room: &str, text: &str) -> u16 {
        let frames =
            json!([{"type": "message", "room": room, "text": text, "client_id": ws::client_id()}]);
        self.post_as(server, conn, frames).await
    }

    /// The next frame of type `ty` for `tab` down the stream (skipping the
    /// carrier's own and other tabs').
    async fn recv_tab(&mut self, tab: &str, ty: &str) -> Value {
        loop {
            let frame = self.sse.next().await.expect("the stream is open");
            if frame.event.as_deref() != Some("tab") {
                continue;
            }
            let data = frame.data.expect("a tab frame has data");
            if data["tab"] == tab && data["msg"]["type"] == ty {
                return data["msg"].clone();
            }
        }
    }
}

#[tokio::test]
async fn tabs_share_one_stream_each_with_a_connection_of_its_own() {
    let server = ws::start(&[("PULSE_WS_PING_INTERVAL", "1s")]).await;
    let mut fay = Fallback::open(&server, "Fay").await;
    let mut wes = Client::connect(&server, "Wes").await;
    wes.join("tech").await;

    // Two more tabs of Fay's browser ride on her stream, each with a
    // connection (and rooms) of its own.
    let one = fay.attach(&server, "tab-1").await;
    let two = fay.attach(&server, "tab_2").await;
    assert_ne!(one, two);
    assert_eq!(
        fay.post_as(&server, &one, json!([{"type": "join", "room": "tech"}]))
            .await,
        202
    );
    let joined = fay.recv_tab("tab-1", "joined").await;
    assert_eq!(ws::names(&joined["members"]), ["Fay", "Wes"]);
    assert_eq!(fay.say_as(&server, &one, "tech", "from a tab").await, 202);
    assert_eq!(fay.recv_tab("tab-1", "message").await["text"], "from a tab");
    assert_eq!(wes.recv_type("message").await["text"], "from a tab");
    wes.say("tech", "to the tab").await;
    assert_eq!(fay.recv_tab("tab-1", "message").await["text"], "to the tab");

    // The second tab is not in #tech: sending there is refused, to it alone.
    assert_eq!(fay.say_as(&server, &two, "tech", "x").await, 202);
    assert_eq!(fay.recv_tab("tab_2", "nack").await["code"], "not_in_room");

    // Another user cannot post to them; a bad tab id is refused; a socket
    // cannot attach.
    let other = post(
        &server,
        &token("Mallory"),
        &json!({ "conn": one, "frames": [{"type": "ping"}] }),
    )
    .await;
    assert_eq!(other, 403);
    fay.post(&server, json!([{"type": "attach", "tab": "not ok!"}]))
        .await;
    assert_eq!(fay.recv_type("error").await["code"], "invalid_message");
    wes.send(json!({"type": "attach", "tab": "t"})).await;
    assert_eq!(wes.recv_type("error").await["code"], "invalid_message");

    // The carrier goes: so do the tabs' connections.
    drop(fay.sse);
    eventually_status(&server, &fay.token, &one, 404).await;
}

#[tokio::test]
async fn an_attached_connection_ends_when_its_tab_stops_posting_and_counts_against_the_cap() {
    let server = ws::start(&[
        ("PULSE_WS_PING_INTERVAL", "1s"),
        ("PULSE_MAX_SOCKETS_PER_USER", "2"),
    ])
    .await;
    let mut fay = Fallback::open(&server, "Fay").await;
    let one = fay.attach(&server, "one").await;
    // The user's two places are taken: a third connection is refused, down
    // the stream, to the tab that asked.
    assert_eq!(
        fay.post(&server, json!([{"type": "attach", "tab": "two"}]))
            .await,
        202
    );
    assert_eq!(fay.recv_tab("two", "closed").await["code"], 1013);

    // Tab one posts a ping a second for a while: it stays.
    for _ in 0..4 {
        assert_eq!(
            fay.post_as(&server, &one, json!([{"type": "ping"}])).await,
            202
        );
        fay.recv_tab("one", "pong").await;
        tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    }
    // Then it stops (its tab closed): three intervals later it is closed,
    // and its place is free again.
    let closed = fay.recv_tab("one", "closed").await;
    assert_eq!(closed["code"], 4003, "{closed}");
    eventually_status(&server, &fay.token, &one, 404).await;
    fay.attach(&server, "three").await;
}
