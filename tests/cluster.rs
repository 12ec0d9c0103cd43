//! One contract, two implementations: the same suite runs against the
//! in-memory broker, presence and revocations (one instance) and against the
//! Redis ones (on a real `redis-server`), so that a single instance and a
//! cluster of them keep the same promises.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use pulse::protocol::{Member, StreamPosition};
use pulse::server::cluster::{
    testing, Cluster, Control, Handler, IdempotencyKey, PresenceChange, Publication, Range,
    StreamLimits,
};
use support::eventually;
use support::redis::Redis;
use tokio_util::sync::CancellationToken;

/// What a handler was handed, in order.
#[derive(Debug, Clone, PartialEq)]
enum Got {
    Publication(String, String, u64, String),
    Presence(String, PresenceChange),
    Control(String),
    Reconnected,
}

#[derive(Default)]
struct Recorder(Mutex<Vec<Got>>);

impl Recorder {
    fn take(&self) -> Vec<Got> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }

    fn push(&self, got: Got) {
        self.0.lock().unwrap().push(got);
    }
}

impl Handler for Recorder {
    fn publication(&self, room: &str, epoch: &str, p: Publication) {
        self.push(Got::Publication(
            room.into(),
            epoch.into(),
            p.offset,
            p.data.to_string(),
        ));
    }
    fn presence(&self, room: &str, change: PresenceChange) {
        self.push(Got::Presence(room.into(), change));
    }
    fn control(&self, control: Control) {
        let what = match control {
            Control::Revoked { sid, .. } => format!("revoked {sid}"),
            Control::Feed { id, .. } => format!("feed {id}"),
            Control::Frames { conn, .. } => format!("frames {conn}"),
        };
        self.push(Got::Control(what));
    }
    fn reconnected(&self) {
        self.push(Got::Reconnected);
    }
}

fn limits() -> StreamLimits {
    StreamLimits {
        size: 5,
        bytes: 1000,
        ttl: Duration::from_secs(60),
        dedup_window: Duration::from_secs(60),
        presence_ttl: Duration::from_secs(30),
    }
}

/// A running instance: its services, what its handler got, and its task.
struct Instance {
    cluster: Cluster,
    got: Arc<Recorder>,
    stop: CancellationToken,
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn start(cluster: Cluster) -> Instance {
    let got = Arc::new(Recorder::default());
    let stop = CancellationToken::new();
    let broker = cluster.broker.clone();
    let (handler, token) = (got.clone() as Arc<dyn Handler>, stop.clone());
    tokio::spawn(async move { broker.run(handler, token).await });
    let instance = Instance { cluster, got, stop };
    // Connected (Redis: subscribed and answering) before the suite starts.
    eventually("the broker to be connected", async || {
        (instance.cluster.broker.describe() != "redis (disconnected)").then_some(())
    })
    .await;
    // Running: what is broadcast comes back to its handler.
    let hello = Control::Frames {
        conn: "warm-up".into(),
        user_id: String::new(),
        frames: Vec::new(),
    };
    eventually("the broker's handler to be in place", async || {
        let _ = instance.cluster.broker.broadcast(&hello).await;
        tokio::task::yield_now().await;
        instance
            .got
            .take()
            .contains(&Got::Control("frames warm-up".into()))
            .then_some(())
    })
    .await;
    // Anything of the warm-up still on its way is not the suite's.
    instance.got.take();
    instance
}

fn member(id: &str) -> Member {
    Member {
        id: id.into(),
        name: id.to_uppercase(),
    }
}

fn rooms(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| n.to_string()).collect()
}

/// Waits until the handler has `n` things and returns them.
async fn got(instance: &Instance, n: usize) -> Vec<Got> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    eventually(&format!("{n} things handed over"), async || {
        let mut all = seen.lock().unwrap();
        all.extend(instance.got.take());
        (all.len() >= n).then(|| all.clone())
    })
    .await
}

/// Offsets, epochs, history, trimming, idempotency, subscriptions.
async fn broker_contract(a: &Instance) {
    let broker = &a.cluster.broker;
    // A room that never had a publication gets its epoch when read.
    let empty = broker.history("r1", Range::Latest(10)).await.unwrap();
    assert_eq!(empty.top.offset, 0);
    assert!(!empty.top.epoch.is_empty());
    assert!(empty.publications.is_empty());

    // Not subscribed: nothing is handed over.
    broker.publish("r1", "zero", None).await.unwrap();
    broker.subscribe(&rooms(&["r1"])).await.unwrap();
    let mut positions = Vec::new();
    for data in ["one", "two", "three"] {
        let published = broker.publish("r1", data, None).await.unwrap();
        assert!(!published.duplicate);
        positions.push(published.position);
    }
    let epoch = empty.top.epoch.clone();
    let offsets: Vec<u64> = positions.iter().map(|p| p.offset).collect();
    assert_eq!(offsets, [2, 3, 4], "one higher than the one before");
    assert!(positions.iter().all(|p| p.epoch == epoch), "one epoch");
    let handed = got(a, 3).await;
    assert_eq!(
        handed,
        [
            Got::Publication("r1".into(), epoch.clone(), 2, "one".into()),
            Got::Publication("r1".into(), epoch.clone(), 3, "two".into()),
            Got::Publication("r1".into(), epoch.clone(), 4, "three".into()),
        ],
        "in offset order, each once"
    );

    // History: the latest, and exactly what came after an offset.
    let latest = broker.history("r1", Range::Latest(2)).await.unwrap();
    let offsets: Vec<u64> = latest.publications.iter().map(|p| p.offset).collect();
    assert_eq!(offsets, [3, 4]);
    assert_eq!(latest.top.offset, 4);
    let after = broker.history("r1", Range::After(2, 10)).await.unwrap();
    assert!(after.is_whole_after(&StreamPosition {
        epoch: epoch.clone(),
        offset: 2
    }));
    let cut = broker.history("r1", Range::After(1, 2)).await.unwrap();
    assert_eq!(cut.publications.len(), 2, "the limit holds");
    assert!(!cut.is_whole_after(&StreamPosition {
        epoch: epoch.clone(),
        offset: 1
    }));

    // Idempotent: the same key is published once and answered the same.
    let key = IdempotencyKey {
        user_id: "u1".into(),
        client_id: "c1".into(),
    };
    let first = broker.publish("r1", "once", Some(&key)).await.unwrap();
    let again = broker.publish("r1", "once", Some(&key)).await.unwrap();
    assert!(!first.duplicate && again.duplicate);
    assert_eq!(first.position, again.position);
    let other_user = IdempotencyKey {
        user_id: "u2".into(),
        client_id: "c1".into(),
    };
    let theirs = broker
        .publish("r1", "theirs", Some(&other_user))
        .await
        .unwrap();
    assert_eq!(theirs.position.offset, first.position.offset + 1);
    assert_eq!(
        got(a, 2).await.len(),
        2,
        "the duplicate was not handed over"
    );

    // Bounded by count (5) and bytes (1000): the oldest go first.
    for i in 0..8 {
        broker.publish("r2", &format!("m{i}"), None).await.unwrap();
    }
    let kept = broker.history("r2", Range::Latest(100)).await.unwrap();
    let texts: Vec<&str> = kept.publications.iter().map(|p| &*p.data).collect();
    assert_eq!(texts, ["m3", "m4", "m5", "m6", "m7"]);
    let since_start = broker.history("r2", Range::After(0, 100)).await.unwrap();
    assert!(
        !since_start.is_whole_after(&StreamPosition {
            epoch: kept.top.epoch.clone(),
            offset: 0
        }),
        "trimmed: never presented as whole"
    );
    let big = "x".repeat(400);
    for _ in 0..3 {
        broker.publish("r3", &big, None).await.unwrap();
    }
    let kept = broker.history("r3", Range::Latest(100)).await.unwrap();
    assert_eq!(kept.publications.len(), 2, "800 of the 1000 bytes");
    assert_eq!(kept.top.offset, 3);

    // Unsubscribed: no longer handed over; presence changes follow the
    // same subscription.
    let joined = PresenceChange::Joined {
        member: member("ada"),
    };
    broker.publish_presence("r1", &joined).await.unwrap();
    assert_eq!(got(a, 1).await, [Got::Presence("r1".into(), joined)]);
    broker.unsubscribe(&rooms(&["r1"]));
    broker.subscribe(&rooms(&["r2"])).await.unwrap();
    broker.publish("r1", "unheard", None).await.unwrap();
    broker.publish("r2", "heard", None).await.unwrap();
    let handed = got(a, 1).await;
    assert!(
        matches!(&handed[..], [Got::Publication(room, _, _, _)] if room == "r2"),
        "{handed:?}"
    );

    // Control events reach every instance, this one included; one instance
    // can be reached alone.
    let revoked = Control::Revoked {
        sid: "s".into(),
        until: 1,
    };
    broker.broadcast(&revoked).await.unwrap();
    assert_eq!(got(a, 1).await, [Got::Control("revoked s".into())]);
    let frames = Control::Frames {
        conn: "c".into(),
        user_id: "u".into(),
        frames: Vec::new(),
    };
    let me = broker.instance().to_string();
    assert!(broker.send_to(&me, &frames).await.unwrap());
    assert_eq!(got(a, 1).await, [Got::Control("frames c".into())]);
    assert!(!broker.send_to("nobody", &frames).await.unwrap());
}

/// Presence on one instance: first and last, the grace, the sweep.
async fn presence_contract(a: &Instance) {
    let presence = &a.cluster.presence;
    let (ada, bob) = (member("ada"), member("bob"));
    let entered = presence.enter("p1", &ada).await.unwrap();
    assert!(entered.first);
    assert_eq!(entered.members, std::slice::from_ref(&ada));
    let entered = presence.enter("p1", &bob).await.unwrap();
    assert!(entered.first);
    let mut both = entered.members.clone();
    both.sort();
    assert_eq!(both, [ada.clone(), bob.clone()]);
    assert!(!presence.enter("p1", &ada).await.unwrap().first, "again");

    // Leaving now: gone at once, once.
    assert!(presence.leave("p1", &bob, None).await.unwrap());
    assert!(!presence.leave("p1", &bob, None).await.unwrap());
    assert_eq!(
        presence.members("p1").await.unwrap(),
        std::slice::from_ref(&ada)
    );

    // Leaving with a grace: present until it ends; a return within it
    // changes nothing; without a return, one sweep reports them gone.
    let cat = member("cat");
    assert!(presence.enter("p1", &cat).await.unwrap().first);
    let grace = Duration::from_millis(300);
    assert!(!presence.leave("p1", &ada, Some(grace)).await.unwrap());
    assert!(!presence.leave("p1", &cat, Some(grace)).await.unwrap());
    let here: &[(String, Member)] = &[];
    let p1 = rooms(&["p1"]);
    assert!(presence.sweep(here, &p1).await.unwrap().is_empty());
    let mut present = presence.members("p1").await.unwrap();
    present.sort();
    assert_eq!(present, [ada.clone(), cat.clone()], "within the grace");
    assert!(
        !presence.enter("p1", &ada).await.unwrap().first,
        "back in time"
    );
    let gone = eventually("cat's grace to end", async || {
        let gone = presence.sweep(here, &p1).await.unwrap();
        (!gone.is_empty()).then_some(gone)
    })
    .await;
    assert_eq!(gone, [("p1".to_string(), cat)], "ada came back in time");
    assert!(!presence.leave("p1", &ada, Some(grace)).await.unwrap());
    let gone = eventually("ada's grace to end", async || {
        let gone = presence.sweep(here, &p1).await.unwrap();
        (!gone.is_empty()).then_some(gone)
    })
    .await;
    assert_eq!(gone, [("p1".to_string(), ada.clone())]);
    assert!(presence.sweep(here, &p1).await.unwrap().is_empty(), "once");
    assert!(presence.members("p1").await.unwrap().is_empty());
}

/// Revocations on one instance.
async fn revocations_contract(a: &Instance) {
    let revocations = &a.cluster.revocations;
    let until = pulse::server::clock::now_secs() + 60;
    assert!(!revocations.is_revoked("s1").await.unwrap());
    revocations.revoke("s1", until).await;
    assert!(revocations.is_revoked("s1").await.unwrap());
    assert!(!revocations.is_revoked("s2").await.unwrap());
    let among = revocations
        .revoked_among(&rooms(&["s0", "s1", "s2"]))
        .await
        .unwrap();
    assert_eq!(among, ["s1"]);
    // Every instance is told (this one included).
    assert_eq!(got(a, 1).await, [Got::Control("revoked s1".into())]);
}

#[tokio::test]
async fn the_memory_implementations_keep_the_contract() {
    let a = start(testing::memory(limits())).await;
    broker_contract(&a).await;
    presence_contract(&a).await;
    revocations_contract(&a).await;
}

#[tokio::test]
async fn the_redis_implementations_keep_the_contract() {
    let redis = Redis::start().await;
    let a = start(testing::redis(&redis.url(), limits()).unwrap()).await;
    broker_contract(&a).await;
    presence_contract(&a).await;
    revocations_contract(&a).await;
}

#[tokio::test]
async fn with_redis_instances_share_streams_presence_and_revocations() {
    let mut redis = Redis::start().await;
    let a = start(testing::redis(&redis.url(), limits()).unwrap()).await;
    let b = start(testing::redis(&redis.url(), limits()).unwrap()).await;
    assert_ne!(a.cluster.broker.instance(), b.cluster.broker.instance());

    // One stream: offsets interleave across publishers, and both get all,
    // in the same order.
    let room = rooms(&["shared"]);
    a.cluster.broker.subscribe(&room).await.unwrap();
    b.cluster.broker.subscribe(&room).await.unwrap();
    let mut epoch = String::new();
    for i in 0..10 {
        let by = if i % 2 == 0 { &a } else { &b };
        let p = by
            .cluster
            .broker
            .publish("shared", &format!("{i}"), None)
            .await;
        let position = p.unwrap().position;
        assert_eq!(position.offset, i + 1);
        epoch = position.epoch;
    }
    // (Other instances' warm-ups may come among them.)
    let publications = async |instance: &Instance| {
        let mut seen = Vec::new();
        eventually("10 publications handed over", async || {
            seen.extend(
                instance
                    .got
                    .take()
                    .into_iter()
                    .filter(|g| matches!(g, Got::Publication(..))),
            );
            (seen.len() >= 10).then(|| seen.clone())
        })
        .await
    };
    let on_a = publications(&a).await;
    let on_b = publications(&b).await;
    assert_eq!(on_a.len(), 10);
    assert_eq!(on_a, on_b);

    // Presence is the union, and a member on both is one member who goes
    // with their last entry.
    let ada = member("ada");
    assert!(a.cluster.presence.enter("p", &ada).await.unwrap().first);
    assert!(!b.cluster.presence.enter("p", &ada).await.unwrap().first);
    assert!(!a.cluster.presence.leave("p", &ada, None).await.unwrap());
    assert!(b.cluster.presence.leave("p", &ada, None).await.unwrap());

    // A member whose instance stops renewing drops out after the TTL; the
    // instance that sweeps says so, once.
    let short = StreamLimits {
        presence_ttl: Duration::from_millis(300),
        ..limits()
    };
    let c = start(testing::redis(&redis.url(), short).unwrap()).await;
    let bob = member("bob");
    assert!(c.cluster.presence.enter("p", &bob).await.unwrap().first);
    drop(c);
    let p = rooms(&["p"]);
    let gone = eventually("bob's entry to expire", async || {
        let gone = a.cluster.presence.sweep(&[], &p).await.ok()?;
        (!gone.is_empty()).then_some(gone)
    })
    .await;
    assert_eq!(gone, [("p".to_string(), bob)]);
    assert!(b.cluster.presence.sweep(&[], &p).await.unwrap().is_empty());

    // A sign-out on one is known to the other, also one that starts later.
    let until = pulse::server::clock::now_secs() + 60;
    a.cluster.revocations.revoke("s9", until).await;
    assert!(b.cluster.revocations.is_revoked("s9").await.unwrap());
    let d = start(testing::redis(&redis.url(), limits()).unwrap()).await;
    assert!(d.cluster.revocations.is_revoked("s9").await.unwrap());

    // A sign-out made while Redis is down is told once it is back.
    b.got.take();
    redis.stop().await;
    eventually("a to see the outage", async || {
        (a.cluster.broker.describe() == "redis (disconnected)").then_some(())
    })
    .await;
    assert!(a.cluster.broker.publish("shared", "x", None).await.is_err());
    a.cluster.revocations.revoke("s10", until).await;
    assert!(
        a.cluster.revocations.is_revoked("s10").await.unwrap(),
        "known here at once"
    );
    redis.launch().await;
    let mut handed = Vec::new();
    // B is told it reconnected (to resynchronise), and hears the sign-out.
    eventually("b to hear of the sign-out", async || {
        handed.extend(b.got.take());
        let revoked = handed.contains(&Got::Control("revoked s10".into()));
        (revoked && handed.contains(&Got::Reconnected)).then_some(())
    })
    .await;
    let known = eventually("d to reconnect", async || {
        d.cluster.revocations.is_revoked("s10").await.ok()
    })
    .await;
    assert!(known, "written to Redis once it was back");

    // Redis lost its data: the stream starts over in a new epoch.
    let fresh = a
        .cluster
        .broker
        .publish("shared", "new", None)
        .await
        .unwrap();
    assert_ne!(fresh.position.epoch, epoch);
    assert_eq!(fresh.position.offset, 1);
}
