//! A real WebSocket client (tokio-tungstenite) for the chat endpoint, and
//! tokens signed with the test servers' secret.

use std::time::{SystemTime, UNIX_EPOCH};

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::{Server, WAIT};

/// A `client_id` no other message of this test process has.
pub fn client_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!(
        "t{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// The secret every chat test server is started with.
pub const SECRET: &str = "a test secret that is long enough for HS256";

/// Starts a server for chat tests: the known secret plus `env`.
pub async fn start(env: &[(&str, &str)]) -> Server {
    let mut all = vec![("PULSE_JWT_SECRET", SECRET)];
    all.extend_from_slice(env);
    Server::start(&all).await
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The user id the test tokens give the display name `name`: one id per
/// name, so two connections as "Ada" are one user.
pub fn id_of(name: &str) -> String {
    format!("test-{}", name.to_lowercase())
}

/// A token for user `id` called `name`, expiring at `exp`, signed with `secret`.
pub fn token_for(secret: &str, id: &str, name: &str, exp: u64) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({ "sub": id, "name": name, "sid": format!("sid-{id}"), "exp": exp, "iat": now() }),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// A token for the user called `name` with the given `exp`, signed with `secret`.
pub fn token_with(secret: &str, name: &str, exp: u64) -> String {
    token_for(secret, &id_of(name), name, exp)
}

/// A valid token for the user called `name`, for an hour.
pub fn token(name: &str) -> String {
    token_with(SECRET, name, now() + 3600)
}

/// The display names in a `members`, `joined` or `left` list.
pub fn names(members: &Value) -> Vec<String> {
    members
        .as_array()
        .expect("a list of members")
        .iter()
        .map(|m| m["name"].as_str().expect("a name").to_string())
        .collect()
}

/// Signs in as `name` through the sign-in form of the site's own page; the
/// session cookie (`pulse_session=…`) and the `Session` the server answered.
pub async fn sign_in(server: &Server, name: &str) -> (String, Value) {
    let res = reqwest::Client::new()
        .post(format!("{}/api/sign_in", server.url))
        .header("origin", &server.url)
        .form(&[("name", name)])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "sign-in as {name:?}");
    let cookie = res.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let session = serde_json::from_str(&res.text().await.unwrap()).unwrap();
    (cookie, session)
}

/// Signs the session of `cookie` out, from the site's own page.
pub async fn sign_out(server: &Server, cookie: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{}/api/sign_out", server.url))
        .header("origin", &server.url)
        .header("cookie", cookie)
        .send()
        .await
        .unwrap()
}

/// `ws://` URL of the server's chat endpoint.
pub fn ws_url(server: &Server) -> String {
    format!("{}/ws", server.url.replacen("http://", "ws://", 1))
}

/// Tries an upgrade with these headers; the HTTP status of the answer
/// (101 when it upgraded).
pub async fn upgrade_status(url: &str, headers: &[(&str, &str)]) -> u16 {
    let mut req = url.into_client_request().unwrap();
    for (k, v) in headers {
        req.headers_mut().insert(
            tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((_, res)) => res.status().as_u16(),
        Err(tungstenite::Error::Http(res)) => res.status().as_u16(),
        Err(e) => panic!("upgrade failed without an HTTP answer: {e}"),
    }
}

/// One chat connection.
pub struct Client {
    /// The socket.
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Client {
    /// Connects as `user` with a Bearer token.
    pub async fn connect(server: &Server, user: &str) -> Client {
        Self::connect_token(server, &token(user)).await
    }

    /// Connects with a Bearer token.
    pub async fn connect_token(server: &Server, token: &str) -> Client {
        let mut req = ws_url(server).into_client_request().unwrap();
        req.headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        let (ws, _) = tokio_tungstenite::connect_async(req)
            .await
            .expect("upgrade");
        Client { ws }
    }

    /// Connects with a session cookie (`pulse_session=…`), as a browser does.
    pub async fn connect_cookie(server: &Server, cookie: &str) -> Client {
        let mut req = ws_url(server).into_client_request().unwrap();
        req.headers_mut().insert("cookie", cookie.parse().unwrap());
        let (ws, _) = tokio_tungstenite::connect_async(req)
            .await
            .expect("upgrade");
        Client { ws }
    }

    /// Connects with `token` from the loopback address `from` (127.0.0.2, …:
    /// each is another client address).
    pub async fn connect_from(server: &Server, token: &str, from: &str) -> Client {
        let addr = server.url.trim_start_matches("http://").parse().unwrap();
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
        let stream = socket.connect(addr).await.unwrap();
        let mut req = ws_url(server).into_client_request().unwrap();
        req.headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        let (ws, _) = tokio_tungstenite::client_async(req, MaybeTlsStream::Plain(stream))
            .await
            .expect("upgrade");
        Client { ws }
    }

    /// Connects as `user` over a socket with a tiny receive buffer, so that a
    /// client that stops reading backs up the server quickly.
    pub async fn connect_small_buffer(server: &Server, user: &str) -> Client {
        let addr = server.url.trim_start_matches("http://").parse().unwrap();
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let stream = socket.connect(addr).await.unwrap();
        let mut req = ws_url(server).into_client_request().unwrap();
        req.headers_mut().insert(
            "authorization",
            format!("Bearer {}", token(user)).parse().unwrap(),
        );
        let (ws, _) = tokio_tungstenite::client_async(req, MaybeTlsStream::Plain(stream))
            .await
            .expect("upgrade");
        Client { ws }
    }

    /// Sends a JSON frame.
    pub async fn send(&mut self, value: Value) {
        self.ws
            .send(Message::text(value.to_string()))
            .await
            .expect("send");
    }

    /// Sends a raw frame.
    pub async fn send_raw(&mut self, msg: Message) {
        self.ws.send(msg).await.expect("send");
    }

    /// The next JSON frame from the server, presence changes included.
    pub async fn recv_any(&mut self) -> Value {
        tokio::time::timeout(WAIT, async {
            loop {
                match self.ws.next().await {
                    Some(Ok(Message::Text(t))) => return serde_json::from_str(&t).unwrap(),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    other => panic!("expected a text frame, got {other:?}"),
                }
            }
        })
        .await
        .expect("no frame from the server")
    }

    /// The next JSON frame from the server that is not a `presence` change
    /// (those come on their own schedule; see [`Client::joined_seen`]) or
    /// an `ack` (the sender's bookkeeping; see [`Client::say_acked`]).
    pub async fn recv(&mut self) -> Value {
        loop {
            let v = self.recv_any().await;
            if v["type"] != "presence" && v["type"] != "ack" {
                return v;
            }
        }
    }

    /// The next frame of type `ty`, skipping others (notices, say).
    pub async fn recv_type(&mut self, ty: &str) -> Value {
        loop {
            let v = self.recv_any().await;
            if v["type"] == ty {
                return v;
            }
        }
    }

    /// Waits for the `presence` frames of `room` that say `name` joined.
    pub async fn joined_seen(&mut self, room: &str, name: &str) -> Value {
        self.presence_seen(room, "joined", name).await
    }

    /// Waits for the `presence` frames of `room` that say `name` left.
    pub async fn left_seen(&mut self, room: &str, name: &str) -> Value {
        self.presence_seen(room, "left", name).await
    }

    async fn presence_seen(&mut self, room: &str, list: &str, name: &str) -> Value {
        loop {
            let v = self.recv_type("presence").await;
            if v["room"] == room && names(&v[list]).iter().any(|n| n == name) {
                return v;
            }
        }
    }

    /// Joins `room` and returns the `joined` answer.
    pub async fn join(&mut self, room: &str) -> Value {
        self.send(json!({ "type": "join", "room": room })).await;
        let v = self.recv_type("joined").await;
        assert_eq!(v["room"], room);
        v
    }

    /// Says `text` in `room`, with a fresh `client_id`; returns it.
    pub async fn say(&mut self, room: &str, text: &str) -> String {
        let id = client_id();
        self.say_as(room, text, &id).await;
        id
    }

    /// Says `text` in `room` with the given `client_id`.
    pub async fn say_as(&mut self, room: &str, text: &str, client_id: &str) {
        self.send(json!({ "type": "message", "room": room, "text": text, "client_id": client_id }))
            .await;
    }

    /// Says `text` in `room` and waits for its `ack` (other frames that come
    /// first are dropped); the ack.
    pub async fn say_acked(&mut self, room: &str, text: &str) -> Value {
        let id = self.say(room, text).await;
        loop {
            let v = self.recv_any().await;
            if (v["type"] == "ack" || v["type"] == "nack") && v["client_id"] == id.as_str() {
                return v;
            }
        }
    }

    /// Waits until the server closes the connection; its close frame, if any.
    pub async fn closed(&mut self) -> Option<CloseFrame> {
        tokio::time::timeout(WAIT, async {
            loop {
                match self.ws.next().await {
                    Some(Ok(Message::Close(frame))) => return frame,
                    Some(Ok(_)) => continue,
                    Some(Err(_)) | None => return None,
                }
            }
        })
        .await
        .expect("the server did not close the connection")
    }

    /// Asserts that nothing was queued for this client before now: it sends a
    /// probe (a leave for a room it is not in) and the very next frame must be
    /// the answer to it. Anything broadcast earlier would have come first.
    pub async fn assert_nothing_pending(&mut self) {
        self.send(json!({ "type": "leave", "room": "zz-probe" }))
            .await;
        // Presence changes come on their own schedule; anything else queued
        // before the probe would come first.
        let v = self.recv().await;
        assert_eq!(
            v["code"], "not_in_room",
            "unexpected frame before the probe: {v}"
        );
    }
}

/// Publishes a notification (as "Ops") on `from` and returns it as a feed
/// opened on `to` before the publication receives it.
pub async fn notification_across(from: &Server, to: &Server, text: &str) -> Value {
    let mut feed = super::Sse::open(&to.url, None).await;
    assert_eq!(feed.next_event().await.kind(), Some("connected"));
    let res = reqwest::Client::new()
        .post(format!("{}/api/notifications", from.url))
        .header("authorization", format!("Bearer {}", token("Ops")))
        .body(json!({ "text": text }).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    loop {
        let f = feed.next_event().await;
        if f.kind() == Some("notification") {
            return f.data.unwrap();
        }
    }
}
