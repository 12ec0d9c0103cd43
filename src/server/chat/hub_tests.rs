//! The hub's rules, against the in-memory broker: order and de-duplication
//! by offset, joins that merge what they read with what arrived meanwhile,
//! gaps, resets, presence gathering, limits.

use super::*;
use crate::server::chat::outbox::Queue;
use crate::server::cluster::{testing, StreamLimits};
use axum::extract::ws::Message;

fn next(q: &mut Queue) -> ServerMessage {
    match q.try_recv() {
        Some(Message::Text(t)) => serde_json::from_str(t.as_str()).unwrap(),
        other => panic!("expected a text frame, got {other:?}"),
    }
}

/// The client address of every connection here.
const HERE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

fn user(id: &str, name: &str) -> User {
    User {
        id: Arc::from(id),
        name: Arc::from(name),
        address: HERE,
    }
}

fn hub_with(max_rooms: usize, idle: Duration, per_hour: u32) -> Hub {
    let limits = StreamLimits::for_tests();
    let rooms = RoomLimits {
        max_rooms,
        room_idle: idle,
        per_user: per_hour,
        per_address: 1000,
    };
    Hub::new(testing::memory(limits).broker, rooms)
}

fn hub() -> Hub {
    hub_with(10, Duration::from_secs(60), 20)
}

fn at(epoch: &str, offset: u64) -> StreamPosition {
    StreamPosition {
        epoch: epoch.into(),
        offset,
    }
}

fn message(room: &str, offset: u64) -> ChatMessage {
    ChatMessage {
        room: room.into(),
        offset,
        id: format!("m{offset}"),
        user_id: "u".into(),
        user: "U".into(),
        text: format!("t{offset}"),
        timestamp: 1,
        client_id: None,
    }
}

/// Admits and completes a join at `top` with no history.
fn join(hub: &Hub, conn: ConnId, who: &User, outbox: &Outbox, room: &str, top: StreamPosition) {
    assert!(matches!(
        hub.admit(conn, who, outbox, room).unwrap(),
        Admission::Joining(_)
    ));
    hub.complete(
        conn,
        room,
        JoinAnswer {
            members: vec![who.member()],
            history: Vec::new(),
            top,
            recovered: false,
        },
    );
}

fn offsets(q: &mut Queue) -> Vec<u64> {
    let mut seen = Vec::new();
    while let Some(Message::Text(t)) = q.try_recv() {
        if let Ok(ServerMessage::Message(m)) = serde_json::from_str(t.as_str()) {
            seen.push(m.offset);
        }
    }
    seen
}

#[test]
fn publications_are_delivered_once_in_offset_order() {
    let hub = hub();
    let (o, mut q) = Outbox::new(1 << 20);
    join(&hub, 1, &user("a", "A"), &o, "x", at("e", 2));
    assert!(matches!(
        next(&mut q),
        ServerMessage::Joined { offset: 2, .. }
    ));
    assert_eq!(hub.arrive("x", "e", message("x", 2)), Arrival::Done, "old");
    assert_eq!(hub.arrive("x", "e", message("x", 3)), Arrival::Done);
    assert_eq!(
        hub.arrive("x", "e", message("x", 3)),
        Arrival::Done,
        "again"
    );
    assert_eq!(offsets(&mut q), [3]);
}

#[test]
fn what_arrives_while_a_join_reads_is_merged_by_offset() {
    let hub = hub();
    let ada = user("a", "A");
    let (o, mut q) = Outbox::new(1 << 20);
    let Ok(Admission::Joining(_)) = hub.admit(1, &ada, &o, "x") else {
        panic!("admitted");
    };
    // 4 and 5 arrive while the join reads the stream up to 4.
    hub.arrive("x", "e", message("x", 4));
    hub.arrive("x", "e", message("x", 5));
    assert!(q.try_recv().is_none(), "nothing before joined");
    hub.complete(
        1,
        "x",
        JoinAnswer {
            members: vec![ada.member()],
            history: vec![message("x", 3), message("x", 4)],
            top: at("e", 4),
            recovered: true,
        },
    );
    match next(&mut q) {
        ServerMessage::Joined {
            history, offset, ..
        } => {
            assert_eq!(history.len(), 2);
            assert_eq!(offset, 4);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(offsets(&mut q), [5], "4 once, in the history");
}

#[test]
fn a_gap_holds_back_until_it_is_filled() {
    let hub = hub();
    let (o, mut q) = Outbox::new(1 << 20);
    join(&hub, 1, &user("a", "A"), &o, "x", at("e", 1));
    let _ = next(&mut q);
    assert_eq!(hub.arrive("x", "e", message("x", 3)), Arrival::Resync);
    assert_eq!(hub.arrive("x", "e", message("x", 4)), Arrival::Done, "once");
    assert!(offsets(&mut q).is_empty(), "held back");
    let from = hub.position("x").unwrap();
    assert_eq!(from, at("e", 1));
    let filled = hub.fill("x", &from, vec![message("x", 2), message("x", 3)]);
    assert_eq!(filled, Arrival::Done);
    assert_eq!(offsets(&mut q), [2, 3, 4]);
}

#[test]
fn a_new_epoch_resets_every_connection() {
    let hub = hub();
    let (o, mut q) = Outbox::new(1 << 20);
    let ada = user("a", "A");
    join(&hub, 1, &ada, &o, "x", at("e", 5));
    let _ = next(&mut q);
    assert_eq!(hub.arrive("x", "f", message("x", 1)), Arrival::Resync);
    hub.reset("x", at("f", 1), vec![message("x", 1)], vec![ada.member()]);
    match next(&mut q) {
        ServerMessage::Joined {
            epoch,
            offset,
            recovered,
            history,
            ..
        } => {
            assert_eq!((epoch.as_str(), offset, recovered), ("f", 1, false));
            assert_eq!(history.len(), 1);
        }
        other => panic!("{other:?}"),
    }
    hub.arrive("x", "f", message("x", 2));
    assert_eq!(offsets(&mut q), [2]);
}

#[test]
fn presence_changes_are_gathered_into_one_frame() {
    let hub = hub();
    let (o, mut q) = Outbox::new(1 << 20);
    join(&hub, 1, &user("a", "A"), &o, "x", at("e", 0));
    let _ = next(&mut q);
    let bob = Member {
        id: "b".into(),
        name: "Bob".into(),
    };
    hub.presence(
        "x",
        PresenceChange::Joined {
            member: bob.clone(),
        },
    );
    hub.presence(
        "x",
        PresenceChange::Left {
            member: bob.clone(),
        },
    );
    hub.presence(
        "y",
        PresenceChange::Joined {
            member: bob.clone(),
        },
    );
    assert!(q.try_recv().is_none(), "nothing until the flush");
    hub.flush_presence();
    match next(&mut q) {
        ServerMessage::Presence { joined, left, .. } => {
            assert!(joined.is_empty(), "the latest state wins");
            assert_eq!(left, [bob]);
        }
        other => panic!("{other:?}"),
    }
    assert!(q.try_recv().is_none(), "one frame");
}

#[test]
fn a_user_with_two_connections_leaves_with_the_last() {
    let hub = hub();
    let ada = user("a", "A");
    let (o1, _q1) = Outbox::new(1 << 20);
    let (o2, _q2) = Outbox::new(1 << 20);
    join(&hub, 1, &ada, &o1, "x", at("e", 0));
    join(&hub, 2, &ada, &o2, "x", at("e", 0));
    assert_eq!(hub.present_here().len(), 1, "one member");
    assert_eq!(hub.remove(1, "x"), Some(false));
    assert_eq!(hub.remove(2, "x"), Some(true));
    assert_eq!(hub.remove(2, "x"), None);
    assert!(hub.followed().is_empty());
    assert!(hub.position("x").is_none(), "no longer followed");
}

#[test]
fn idle_rooms_go_and_room_creation_is_limited_per_user() {
    let hub = hub_with(100, Duration::ZERO, 2);
    let u = user("u", "u");
    let (o, _q) = Outbox::new(usize::MAX);
    hub.admit(1, &u, &o, "a").unwrap();
    hub.admit(1, &u, &o, "b").unwrap();
    let refused = hub.admit(1, &u, &o, "c").err().unwrap();
    assert!(matches!(
        *refused,
        ServerMessage::Error {
            code: ErrorCode::RateLimited,
            retry_after_ms: Some(_),
            ..
        }
    ));
    // Another user is not affected; joining existing rooms never is.
    hub.admit(2, &user("v", "v"), &o, "c").unwrap();
    hub.admit(1, &u, &o, "c").unwrap();
    assert_eq!(hub.remove(1, "a"), Some(true));
    assert_eq!(hub.sweep(), 1);
}

#[test]
fn the_users_of_one_address_share_a_room_creation_budget() {
    let limits = StreamLimits::for_tests();
    let rooms = RoomLimits {
        max_rooms: 100,
        room_idle: Duration::from_secs(60),
        per_user: 20,
        per_address: 2,
    };
    let hub = Hub::new(testing::memory(limits).broker, rooms);
    let (o, _q) = Outbox::new(usize::MAX);
    let there: IpAddr = "192.0.2.9".parse().unwrap();
    hub.admit(1, &user("a", "A"), &o, "r1").unwrap();
    hub.admit(2, &user("b", "B"), &o, "r2").unwrap();
    assert!(
        hub.admit(3, &user("c", "C"), &o, "r3").is_err(),
        "a new identity does not help"
    );
    let dan = User {
        address: there,
        ..user("d", "D")
    };
    hub.admit(4, &dan, &o, "r3").unwrap();
    hub.admit(3, &user("c", "C"), &o, "r1").unwrap();
}

#[test]
fn a_room_only_its_creator_joined_goes_sooner() {
    let hub = hub_with(100, Duration::from_secs(300), 20);
    let (ada, bob) = (user("a", "Ada"), user("b", "Bob"));
    let (o, _q) = Outbox::new(usize::MAX);
    hub.admit(1, &ada, &o, "lonely").unwrap();
    hub.admit(1, &ada, &o, "visited").unwrap();
    hub.admit(2, &bob, &o, "visited").unwrap();
    hub.remove(1, "lonely");
    hub.remove(1, "visited");
    hub.remove(2, "visited");
    let ago = LONELY_ROOM_IDLE + Duration::from_secs(1);
    hub.emptied("lonely", ago);
    hub.emptied("visited", ago);
    assert_eq!(hub.sweep(), 1);
    let rooms = hub.rooms();
    assert!(!rooms.by_name.contains_key("lonely"));
    assert!(
        rooms.by_name.contains_key("visited"),
        "kept for PULSE_ROOM_IDLE"
    );
}

#[test]
fn a_full_queue_marks_the_member_too_slow_without_blocking() {
    let hub = hub();
    let u = user("u", "u");
    let (slow, _keep) = Outbox::new(1024);
    let (fast, mut fast_rx) = Outbox::new(1 << 20);
    join(&hub, 1, &u, &slow, "general", at("e", 0));
    join(&hub, 2, &u, &fast, "general", at("e", 0));
    for offset in 1..=10 {
        let mut m = message("general", offset);
        m.text = "hi".repeat(100);
        hub.arrive("general", "e", m);
    }
    assert!(slow.too_slow().is_cancelled());
    assert_eq!(offsets(&mut fast_rx).len(), 10);
    assert_eq!(fast_rx.queued_bytes(), 0, "bytes given back");
}
