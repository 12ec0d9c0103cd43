//! Chat and rooms: the service behind both transports.
//!
//! - [`gate`]: the checks every chat connection passes first (origin,
//!   token, the user's cap);
//! - [`client`]: one connection's life, written once over a
//!   [`client::Transport`] (frames in, frames out);
//! - [`ws`]: `GET /ws`, the WebSocket transport;
//! - [`fallback`]: the HTTP fallback (SSE down, POST up) and its inboxes;
//! - [`hub`] and [`room`]: this instance's rooms and fan-out to them;
//! - [`outbox`]: a connection's byte-bounded queue.
//!
//! [`Chat`] holds the operations the transports' frames call (join, leave,
//! say) over the shared [`Cluster`]: a message is published into the room's
//! stream and comes back, from the broker, to every instance's hub, this
//! one's included, in offset order. What the broker hands over arrives
//! through [`Chat::on_publication`] and its siblings (called by the
//! server's handler); gaps and lost streams are mended by this service's
//! task ([`Chat::run`]).

pub mod client;
pub mod fallback;
pub mod gate;
pub mod hub;
pub mod outbox;
mod reads;
mod room;
mod upkeep;
pub mod user;
pub mod ws;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::protocol::{
    ChatMessage, ClientMessage, ErrorCode, ServerMessage, StreamPosition, HISTORY_LEN,
};
use crate::server::admission::KeyedCounter;
use crate::server::clock::now_ms;
use crate::server::cluster::{
    Broker, Cluster, IdempotencyKey, Presence, PresenceChange, Publication, Range, Unavailable,
    RETRY_UNAVAILABLE,
};
use crate::server::config::{AppSettings, ChatTransport};
use crate::server::limits::RateLimits;
use crate::server::metrics;
use crate::server::security::Origins;
use crate::server::sessions::Sessions;
use hub::{Admission, Hub, JoinAnswer, RoomLimits};
use outbox::Outbox;
use reads::{decode, decode_all, recent};
use room::Arrival;
use user::{ConnId, User};

/// Everything the chat endpoints share.
pub struct Chat {
    /// This instance's rooms and their connections.
    hub: Hub,
    /// Rooms' streams and the other instances.
    broker: Arc<dyn Broker>,
    /// Who is in which room across instances.
    presence: Arc<dyn Presence>,
    /// Tokens and sign-outs.
    sessions: Arc<Sessions>,
    /// Per-user message and join/leave rates.
    limits: Arc<RateLimits>,
    /// Open connections per user.
    sockets_per_user: Arc<KeyedCounter<Arc<str>>>,
    /// The pages allowed to connect with a visitor's session.
    origins: Origins,
    /// Whether `GET /ws` is offered (`PULSE_TRANSPORTS`).
    websocket: bool,
    /// Whether the HTTP fallback is offered (`PULSE_TRANSPORTS`).
    http: bool,
    /// Period of the server's pings.
    ping_interval: Duration,
    /// Bytes that may wait in one connection's outbound queue.
    queue_bytes: usize,
    /// Most publications a join recovers (`PULSE_RECOVERY_MAX`).
    recovery_max: usize,
    /// How long a member who lost their last connection stays present
    /// (`PULSE_PRESENCE_GRACE`).
    presence_grace: Duration,
    /// How often presence entries are renewed and expired ones swept.
    presence_period: Duration,
    /// Source of connection ids.
    next_id: AtomicU64,
    /// Cancelled at shutdown: every connection closes (1001).
    shutdown: CancellationToken,
    /// Tracks every open connection, so that the server waits at shutdown
    /// for their last frames to go out.
    sockets: TaskTracker,
    /// The HTTP fallback's connections held here, by name.
    inboxes: fallback::Inboxes,
    /// Rooms whose stream must be read again (a gap, a new epoch, a
    /// reconnect), for [`Chat::run`].
    resyncs: mpsc::UnboundedSender<Resync>,
    /// Its receiving end, taken once by [`Chat::run`].
    resync_queue: Mutex<Option<mpsc::UnboundedReceiver<Resync>>>,
    /// Reads of rooms' streams under way, shared by joins that ask alike.
    reads: reads::Reads,
}

/// What to read again.
enum Resync {
    /// One room.
    Room(String),
    /// Every room followed here.
    All,
}

/// What [`Chat::new`] is built from besides the settings.
pub struct ChatParts {
    /// The shared services.
    pub cluster: Cluster,
    /// Tokens and sign-outs.
    pub sessions: Arc<Sessions>,
    /// Per-user rates (shared with notifications).
    pub limits: Arc<RateLimits>,
    /// Cancelled at shutdown.
    pub shutdown: CancellationToken,
    /// Where connections run.
    pub sockets: TaskTracker,
}

impl Chat {
    /// The chat service for these settings.
    pub fn new(app: &AppSettings, parts: ChatParts) -> Self {
        let broker = parts.cluster.broker;
        let (resyncs, resync_queue) = mpsc::unbounded_channel();
        Chat {
            hub: Hub::new(
                broker.clone(),
                RoomLimits {
                    max_rooms: app.max_rooms,
                    room_idle: app.room_idle,
                    per_user: app.rooms_per_user,
                    per_address: app.rooms_per_ip,
                },
            ),
            broker,
            presence: parts.cluster.presence,
            sessions: parts.sessions,
            limits: parts.limits,
            sockets_per_user: KeyedCounter::new(app.max_sockets_per_user),
            origins: Origins::new(app.allowed_origins.clone()),
            websocket: app.transports.contains(&ChatTransport::Websocket),
            http: app.transports.contains(&ChatTransport::Http),
            ping_interval: app.ws_ping_interval,
            queue_bytes: app.ws_queue_bytes,
            recovery_max: app.recovery_max,
            presence_grace: app.presence_grace,
            presence_period: (app.presence_grace / 2)
                .min(app.presence_ttl / 3)
                .max(Duration::from_millis(100)),
            next_id: AtomicU64::new(1),
            shutdown: parts.shutdown,
            sockets: parts.sockets,
            inboxes: fallback::Inboxes::default(),
            resyncs,
            resync_queue: Mutex::new(Some(resync_queue)),
            reads: reads::Reads::default(),
        }
    }

    /// Number of rooms held (for the dashboard).
    pub fn room_count(&self) -> usize {
        self.hub.room_count()
    }

    /// A new connection id.
    fn new_id(&self) -> ConnId {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Puts connection `id` of `user` into `room` and answers it with
    /// `joined` (recovering from `since` when it can), or says why not.
    async fn join(
        &self,
        id: ConnId,
        user: &User,
        outbox: &Outbox,
        room: &str,
        since: Option<StreamPosition>,
    ) -> Result<(), Box<ServerMessage>> {
        let member = user.member();
        let subscribed = match self.hub.admit(id, user, outbox, room)? {
            Admission::Joining(subscribed) => subscribed,
            Admission::AlreadyIn => {
                // Joined again (a client that saw a gap): the members, and
                // what came after `since` if it asks.
                let entered = self.presence.enter(room, &member).await;
                let entered = entered.map_err(|_| unavailable_error())?;
                let read = match since {
                    Some(since) => Some(
                        self.read_for_join(room, Some(since), Instant::now())
                            .await
                            .map_err(|_| unavailable_error())?,
                    ),
                    None => None,
                };
                self.hub.answer_again(id, room, entered.members, read);
                return Ok(());
            }
        };
        // Subscribed before the stream is read: what is published from now
        // on arrives live, and the hub merges the two by offset.
        let admitted = Instant::now();
        let mut entered = None;
        let read = async {
            subscribed.await?;
            entered = Some(self.presence.enter(room, &member).await?);
            self.read_for_join(room, since, admitted).await
        }
        .await;
        let ((history, top, recovered), entered) = match (read, entered) {
            (Ok(read), Some(entered)) => (read, entered),
            (_, entered) => {
                if self.hub.remove(id, room) == Some(true) && entered.is_some() {
                    let _ = self.presence.leave(room, &member, None).await;
                }
                return Err(Box::new(unavailable_error()));
            }
        };
        let answer = JoinAnswer {
            members: entered.members,
            history,
            top,
            recovered,
        };
        if self.hub.complete(id, room, answer) == Arrival::Resync {
            self.resync(room);
        }
        if entered.first {
            let change = PresenceChange::Joined { member };
            if self.broker.publish_presence(room, &change).await.is_err() {
                tracing::debug!(room, "could not tell the room of a join");
            }
        }
        Ok(())
    }

    /// What a join sends: exactly what came after `since` if that can be
    /// had whole (and is no more than `PULSE_RECOVERY_MAX`), else the recent
    /// history; with the stream's top, and whether it recovered. Read at
    /// some moment after `admitted` (when the joiner started to keep what
    /// the room delivers).
    async fn read_for_join(
        &self,
        room: &str,
        since: Option<StreamPosition>,
        admitted: Instant,
    ) -> Result<(Vec<ChatMessage>, StreamPosition, bool), Unavailable> {
        if let Some(since) = since {
            let after = Range::After(since.offset, self.recovery_max);
            let read = self.reads.read(&self.broker, room, after, admitted).await?;
            if read.is_whole_after(&since) {
                let history = decode_all(room, &read.publications);
                return Ok((history, read.top.clone(), true));
            }
        }
        let latest = Range::Latest(HISTORY_LEN);
        let read = self
            .reads
            .read(&self.broker, room, latest, admitted)
            .await?;
        let history = recent(decode_all(room, &read.publications));
        Ok((history, read.top.clone(), false))
    }

    /// Takes connection `id` out of `room`, answering it with `left`; false
    /// if it was not in the room.
    async fn leave(&self, id: ConnId, user: &User, outbox: &Outbox, room: &str) -> bool {
        let Some(last) = self.hub.remove(id, room) else {
            return false;
        };
        outbox.send(&ServerMessage::Left {
            room: room.to_string(),
        });
        if last {
            let member = user.member();
            if let Ok(true) = self.presence.leave(room, &member, None).await {
                let change = PresenceChange::Left { member };
                let _ = self.broker.publish_presence(room, &change).await;
            }
        }
        true
    }

    /// Takes a connection that went away out of its rooms. Its user stays
    /// present for the grace: a reconnect within it changes nothing for the
    /// others; if none comes, the presence sweep tells them.
    async fn disconnect(&self, id: ConnId, user: &User, rooms: &BTreeSet<String>) {
        let member = user.member();
        for room in rooms {
            if self.hub.remove(id, room) == Some(true) {
                let grace = Some(self.presence_grace);
                // While Redis is down the entry expires by itself instead.
                let _ = self.presence.leave(room, &member, grace).await;
            }
        }
    }

    /// Publishes `text` by `user` in `room` (once per `client_id`): `ack`
    /// with its offset, or `nack` when it could not be published.
    async fn say(&self, user: &User, room: &str, text: &str, client_id: &str) -> ServerMessage {
        let message = ChatMessage {
            room: room.to_string(),
            offset: 0,
            id: uuid::Uuid::now_v7().simple().to_string(),
            user_id: user.id.to_string(),
            user: user.name.to_string(),
            text: text.to_string(),
            timestamp: now_ms(),
            client_id: Some(client_id.to_string()),
        };
        // Serialising this plain struct cannot fail.
        let data = serde_json::to_string(&message).unwrap_or_default();
        let key = IdempotencyKey {
            user_id: user.id.to_string(),
            client_id: client_id.to_string(),
        };
        match self.broker.publish(room, &data, Some(&key)).await {
            Ok(published) => ServerMessage::Ack {
                room: room.to_string(),
                client_id: client_id.to_string(),
                offset: published.position.offset,
            },
            Err(Unavailable) => nack(
                room,
                client_id,
                ErrorCode::Unavailable,
                "the other servers cannot be reached; send it again later",
                Some(RETRY_UNAVAILABLE),
            ),
        }
    }

    /// A publication from the broker (this instance's own included).
    pub fn on_publication(&self, room: &str, epoch: &str, publication: Publication) {
        metrics::publication_received();
        let Some(message) = decode(room, &publication) else {
            tracing::warn!(room, "ignoring an unreadable publication");
            return;
        };
        if self.hub.arrive(room, epoch, message) == Arrival::Resync {
            self.resync(room);
        }
    }

    /// Someone entered or left a room, on any instance.
    pub fn on_presence(&self, room: &str, change: PresenceChange) {
        self.hub.presence(room, change);
    }

    /// Frames posted on another instance for a fallback connection held here.
    pub fn on_frames(&self, conn: &str, user_id: &str, frames: Vec<ClientMessage>) {
        self.inboxes.deliver_crossed(conn, user_id, frames);
    }

    /// The link to the other instances is back: read every followed room's
    /// stream after its position, for what did not arrive meanwhile.
    pub fn on_reconnected(&self) {
        let _ = self.resyncs.send(Resync::All);
    }

    fn resync(&self, room: &str) {
        let _ = self.resyncs.send(Resync::Room(room.to_string()));
    }
}

/// The refusal of a join or frame while the other servers cannot be reached.
fn unavailable_error() -> ServerMessage {
    ServerMessage::Error {
        code: ErrorCode::Unavailable,
        message: "the other servers cannot be reached; try again shortly".into(),
        retry_after_ms: Some(RETRY_UNAVAILABLE.as_millis() as u64),
    }
}

/// A `nack` for `client_id`.
fn nack(
    room: &str,
    client_id: &str,
    code: ErrorCode,
    message: impl Into<String>,
    retry_after: Option<Duration>,
) -> ServerMessage {
    metrics::nacked(code.as_str());
    ServerMessage::Nack {
        room: room.to_string(),
        client_id: client_id.to_string(),
        code,
        message: message.into(),
        retry_after_ms: retry_after.map(|wait| wait.as_millis().max(1) as u64),
    }
}
