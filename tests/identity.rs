//! Who is who: sign-in mints ids (names are only shown), limits follow ids,
//! sign-in is limited per address, cross-site requests are refused, token
//! lifetimes are bounded, sign-out revokes, room creation is limited, and a
//! crowd joining one room is not dropped. Against the real binary.

mod support;

use std::net::IpAddr;

use serde_json::{json, Value};
use support::ws::{self, names, now, token, token_for, upgrade_status, ws_url, Client, SECRET};
use support::{Server, WAIT};

/// A signed-in browser: its session cookie and what sign-in answered.
struct Guest {
    /// `pulse_session=…`.
    cookie: String,
    /// The `Session` the server function returned.
    session: Value,
}

/// An HTTP client whose connections come from the loopback address `from`.
fn http_from(from: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(from.parse::<IpAddr>().unwrap())
        .build()
        .unwrap()
}

/// Posts the sign-in form as the site's own page would.
async fn sign_in_as(http: &reqwest::Client, server: &Server, name: &str) -> reqwest::Response {
    http.post(format!("{}/api/sign_in", server.url))
        .header("origin", &server.url)
        .form(&[("name", name)])
        .send()
        .await
        .unwrap()
}

async fn guest(server: &Server, name: &str) -> Guest {
    let (cookie, session) = ws::sign_in(server, name).await;
    Guest { cookie, session }
}

#[tokio::test]
async fn one_name_two_people_two_ids_and_independent_limits() {
    let server = ws::start(&[("PULSE_RATE_LIMIT_PER_MIN", "2")]).await;
    let first = guest(&server, "Ada").await;
    let second = guest(&server, "Ada").await;
    let (id1, id2) = (&first.session["user_id"], &second.session["user_id"]);
    assert_ne!(id1, id2, "a sign-in mints a new id");

    let mut a1 = Client::connect_cookie(&server, &first.cookie).await;
    let mut a2 = Client::connect_cookie(&server, &second.cookie).await;
    a1.join("tech").await;
    let joined = a2.join("tech").await;
    // Two members of the same name, told apart by id.
    assert_eq!(names(&joined["members"]), ["Ada", "Ada"]);
    let ids: Vec<&Value> = joined["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| &m["id"])
        .collect();
    assert!(ids.contains(&id1) && ids.contains(&id2), "{joined}");

    // The first spends her own limit, not the other Ada's.
    for i in 0..2 {
        a1.say("tech", &format!("m{i}")).await;
        assert_eq!(a1.recv_type("message").await["user_id"], *id1);
    }
    a1.say("tech", "over").await;
    assert_eq!(a1.recv().await["code"], "rate_limited");
    a2.say("tech", "mine").await;
    let m = loop {
        let m = a2.recv_type("message").await;
        if m["text"] == "mine" {
            break m;
        }
    };
    assert_eq!(&m["user_id"], id2);
}

#[tokio::test]
async fn sign_in_is_limited_per_address() {
    let server = ws::start(&[("PULSE_SIGNIN_PER_MIN", "3")]).await;
    let here = http_from("127.0.0.1");
    for i in 0..3 {
        let res = sign_in_as(&here, &server, &format!("Guest{i}")).await;
        assert_eq!(res.status(), 200);
    }
    let res = sign_in_as(&here, &server, "Guest3").await;
    assert_eq!(res.status(), 429);
    assert!(res.headers().get("retry-after").is_some());
    assert!(res.headers().get("set-cookie").is_none());
    server
        .wait_metric("pulse_refused_total{reason=\"signin\"}", 1.0)
        .await;
    // Another address is not affected.
    let res = sign_in_as(&http_from("127.0.0.2"), &server, "Other").await;
    assert_eq!(res.status(), 200);
}

#[tokio::test]
async fn bad_display_names_get_a_400_with_the_reason() {
    let server = ws::start(&[]).await;
    let http = reqwest::Client::new();
    for bad in [
        "   ",
        "zero\u{200B}width",
        "evil\u{202E}txet",
        "\u{3164}",
        "nul\u{0}",
        &"x".repeat(33),
    ] {
        let res = sign_in_as(&http, &server, bad).await;
        assert_eq!(res.status(), 400, "{bad:?}");
        assert!(res.headers().get("set-cookie").is_none());
        let body = res.text().await.unwrap();
        assert!(body.contains("a name"), "{bad:?}: {body}");
    }
    // Normalised: "e" + combining acute is stored as "é".
    let g = guest(&server, "Rene\u{301}").await;
    assert_eq!(g.session["user"], "Ren\u{e9}");
}

#[tokio::test]
async fn message_text_may_not_carry_control_characters() {
    let server = ws::start(&[]).await;
    let mut ada = Client::connect(&server, "Ada").await;
    ada.join("general").await;
    for bad in ["nul\u{0}", "clear\u{1b}[2J", "bell\u{7}"] {
        ada.say("general", bad).await;
        let err = ada.recv().await;
        assert_eq!(err["code"], "invalid_message", "{bad:?}: {err}");
    }
    // Newlines and tabs are text; the socket is still usable.
    ada.say("general", "two\nlines\tand a tab").await;
    assert_eq!(ada.recv().await["text"], "two\nlines\tand a tab");
    let res = reqwest::Client::new()
        .post(format!("{}/api/notifications", server.url))
        .header("authorization", format!("Bearer {}", token("Ada")))
        .body("{\"text\":\"esc\\u001b[31m\"}")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
}

#[tokio::test]
async fn bidi_controls_that_reorder_what_others_see_are_refused() {
    let server = ws::start(&[]).await;
    let mut ada = Client::connect(&server, "Ada").await;
    let mut bob = Client::connect(&server, "Bob").await;
    ada.join("general").await;
    bob.join("general").await;
    for bad in [
        "invoice_\u{202E}fdp.exe",
        "a\u{2066}b\u{2069}",
        "x\u{202A}y",
    ] {
        ada.say("general", bad).await;
        let refused = ada.recv().await;
        assert_eq!(refused["type"], "nack", "{bad:?}: {refused}");
        assert_eq!(refused["code"], "invalid_message", "{bad:?}: {refused}");
    }
    // Nothing reached Bob; right-to-left text itself does.
    ada.say("general", "שלום").await;
    assert_eq!(bob.recv_type("message").await["text"], "שלום");
    let res = reqwest::Client::new()
        .post(format!("{}/api/notifications", server.url))
        .header("authorization", format!("Bearer {}", token("Ada")))
        .body("{\"text\":\"invoice_\\u202efdp.exe\"}")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
}

#[tokio::test]
async fn cross_site_requests_are_refused_and_same_site_ones_accepted() {
    let server = ws::start(&[]).await;
    let http = reqwest::Client::new();
    let post = |path: &str, headers: &[(&'static str, &str)], body: &'static str| {
        let mut req = http
            .post(format!("{}{path}", server.url))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send()
    };
    // Sign-in (login CSRF) from another site: refused, no cookie set.
    let res = post(
        "/api/sign_in",
        &[("origin", "https://evil.example")],
        "name=Mallory",
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 403);
    assert!(res.headers().get("set-cookie").is_none());
    let res = post(
        "/api/sign_in",
        &[("sec-fetch-site", "cross-site")],
        "name=Mallory",
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 403);
    // From the site's own page: accepted.
    let own = server.url.clone();
    let res = post("/api/sign_in", &[("origin", &own)], "name=Ada")
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let res = post(
        "/api/sign_in",
        &[("sec-fetch-site", "same-origin")],
        "name=Ada",
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 200);

    // Publishing with the cookie from another site: refused.
    let g = guest(&server, "Ada").await;
    let cookie = g.cookie.as_str();
    let res = post(
        "/api/publish_notification",
        &[("cookie", cookie), ("origin", "https://evil.example")],
        "text=pwned",
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 403);
    let res = post(
        "/api/publish_notification",
        &[("cookie", cookie), ("origin", &own)],
        "text=hello",
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 200);
    // A Bearer token is not cookie-driven: it passes whatever the origin.
    let res = http
        .post(format!("{}/api/notifications", server.url))
        .header("authorization", format!("Bearer {}", token("Ops")))
        .header("origin", "https://tools.example")
        .body(r#"{"text":"deploy"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    server
        .wait_metric("pulse_refused_total{reason=\"cross_site\"}", 3.0)
        .await;
}

#[tokio::test]
async fn publishing_signed_out_is_a_401() {
    let server = ws::start(&[]).await;
    let res = reqwest::Client::new()
        .post(format!("{}/api/publish_notification", server.url))
        .header("origin", &server.url)
        .form(&[("text", "hello")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
}

#[tokio::test]
async fn long_lived_and_iat_less_tokens_are_refused() {
    let server = ws::start(&[]).await;
    let url = ws_url(&server);
    let sign = |claims: Value| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    };
    let bearer = |t: String| format!("Bearer {t}");
    let now = now();
    let century = sign(
        json!({"sub": "u", "name": "Old", "sid": "s", "iat": now, "exp": now + 100 * 365 * 86400}),
    );
    let no_iat = sign(json!({"sub": "u", "name": "Old", "sid": "s", "exp": now + 60}));
    let day = sign(json!({"sub": "u", "name": "Ok", "sid": "s", "iat": now, "exp": now + 86400}));
    assert_eq!(
        upgrade_status(&url, &[("authorization", &bearer(century))]).await,
        401
    );
    assert_eq!(
        upgrade_status(&url, &[("authorization", &bearer(no_iat))]).await,
        401
    );
    assert_eq!(
        upgrade_status(&url, &[("authorization", &bearer(day))]).await,
        101
    );

    // `pulse token` cannot mint past the limit either.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pulse"))
        .args(["token", "--name", "bot", "--ttl", "30d"])
        .env("PULSE_JWT_SECRET", SECRET)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("PULSE_MAX_TOKEN_TTL"));
}

#[tokio::test]
async fn sign_out_revokes_the_session_and_closes_its_sockets() {
    let server = ws::start(&[]).await;
    let g = guest(&server, "Ada").await;
    let other = guest(&server, "Bob").await;
    let mut socket = Client::connect_cookie(&server, &g.cookie).await;
    socket.join("general").await;
    let mut bystander = Client::connect_cookie(&server, &other.cookie).await;
    bystander.join("general").await;

    assert_eq!(ws::sign_out(&server, &g.cookie).await.status(), 200);
    let frame = socket.closed().await.expect("a close frame");
    assert_eq!(u16::from(frame.code), 4001);
    assert_eq!(frame.reason.as_str(), "signed out");

    // The old cookie opens nothing and renews nothing.
    assert_eq!(
        upgrade_status(&ws_url(&server), &[("cookie", &g.cookie)]).await,
        401
    );
    let res = reqwest::Client::new()
        .post(format!("{}/api/renew_session", server.url))
        .header("origin", &server.url)
        .header("cookie", &g.cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert!(res.headers().get("set-cookie").is_none());
    // Other sessions are untouched.
    bystander.say("general", "still here").await;
    assert_eq!(bystander.recv().await["text"], "still here");
}

#[tokio::test]
async fn room_creation_is_limited_per_user() {
    let server = ws::start(&[("PULSE_ROOMS_PER_USER", "2")]).await;
    let mut ada = Client::connect(&server, "Ada").await;
    ada.join("ada-1").await;
    ada.join("ada-2").await;
    ada.send(json!({"type": "join", "room": "ada-3"})).await;
    let err = ada.recv().await;
    assert_eq!(err["code"], "rate_limited", "{err}");
    assert!(err["retry_after_ms"].as_u64().is_some_and(|ms| ms > 0));
    // Existing rooms are still open to her; others still create rooms.
    ada.join("general").await;
    let mut bob = Client::connect(&server, "Bob").await;
    bob.join("bob-1").await;
    ada.join("bob-1").await;
}

#[tokio::test]
async fn a_thousand_members_joining_at_once_are_all_kept_with_exact_lists() {
    const N: usize = 1000;
    // The test process holds N sockets too.
    rlimit::increase_nofile_limit(u64::MAX).unwrap();
    // N people on one loopback address: its joins per minute too.
    let server = ws::start(&[
        ("PULSE_MAX_CONNECTIONS_PER_IP", "2000"),
        ("PULSE_MAX_CONNECTIONS", "5000"),
        ("PULSE_RATE_LIMIT_PER_IP_PER_MIN", "100000"),
    ])
    .await;
    let mut clients = Vec::with_capacity(N);
    for i in 0..N {
        let t = token_for(
            SECRET,
            &format!("crowd-{i}"),
            &format!("Crowd{i}"),
            now() + 3600,
        );
        clients.push(Client::connect_token(&server, &t).await);
    }
    // Everyone joins at once, then follows the room until its list is whole.
    let mut tasks = Vec::with_capacity(N);
    for mut c in clients {
        tasks.push(tokio::spawn(async move {
            c.send(json!({"type": "join", "room": "general"})).await;
            let joined = c.recv_type("joined").await;
            let mut members: std::collections::BTreeSet<String> = joined["members"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["id"].as_str().unwrap().to_string())
                .collect();
            while members.len() < N {
                let v = c.recv_any().await;
                assert_eq!(v["type"], "presence", "{v}");
                for m in v["joined"].as_array().unwrap() {
                    members.insert(m["id"].as_str().unwrap().to_string());
                }
                for m in v["left"].as_array().unwrap() {
                    members.remove(m["id"].as_str().unwrap());
                }
            }
            assert_eq!(members.len(), N);
            c
        }));
    }
    let mut clients = Vec::with_capacity(N);
    for t in tasks {
        clients.push(
            tokio::time::timeout(WAIT * 4, t)
                .await
                .expect("in time")
                .unwrap(),
        );
    }
    assert_eq!(server.metric("pulse_slow_clients_dropped_total").await, 0.0);
    // Everyone is still connected and hears the next message.
    clients[0].say("general", "all here?").await;
    for c in clients.iter_mut().rev().take(10) {
        assert_eq!(c.recv().await["text"], "all here?");
    }
}
