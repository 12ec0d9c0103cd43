//! Sign-in sessions across instances: a token is good only while its
//! session has not been signed out, here or on any instance; signing out
//! closes the session's open connections everywhere (close code 4001).
//!
//! [`Auth`] checks tokens; [`Revocations`] knows which sessions were signed
//! out, for every instance. A sign-out told by another instance arrives
//! through [`Sessions::on_revoked`]; after a break in the link to the
//! others, the sessions open here are asked about again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::server::auth::{Auth, AuthError, Claims};
use crate::server::cluster::Revocations;

/// How often the sign-in limit's state of quiet addresses is forgotten.
const UPKEEP: Duration = Duration::from_secs(10);

/// While the other instances cannot be reached, a session is accepted here
/// only if this instance vouches for it: it has a connection open here, or
/// was checked (with them reachable) this recently.
pub const VOUCH_FOR: Duration = Duration::from_secs(120);

/// The sessions service.
pub struct Sessions {
    /// Checks and issues tokens.
    auth: Arc<Auth>,
    /// Signed-out sessions, across instances.
    revocations: Arc<dyn Revocations>,
    /// The sessions with connections open on this instance, to close those
    /// connections when the session is signed out.
    open: Mutex<HashMap<Arc<str>, OpenSession>>,
    /// Woken when the link to the other instances is back.
    recheck: Notify,
    /// Sessions checked against every instance's sign-outs, and when.
    checked: Mutex<HashMap<String, Instant>>,
}

/// A session with connections open on this instance.
struct OpenSession {
    /// Cancelled when the session is signed out: its connections close.
    signed_out: CancellationToken,
    /// How many connections it has here.
    connections: usize,
}

/// A connection's hold on its session: the signal that it was signed out;
/// the session is forgotten with its last connection.
pub struct SessionHold {
    /// Where the hold is counted.
    sessions: Arc<Sessions>,
    /// The session id.
    sid: Arc<str>,
    /// Cancelled when the session is signed out.
    signed_out: CancellationToken,
}

impl Sessions {
    /// Sessions of tokens checked by `auth`, signed out through `revocations`.
    pub fn new(auth: Arc<Auth>, revocations: Arc<dyn Revocations>) -> Sessions {
        Sessions {
            auth,
            revocations,
            open: Mutex::new(HashMap::new()),
            recheck: Notify::new(),
            checked: Mutex::new(HashMap::new()),
        }
    }

    /// The token service (sign-in limits, issuing, cookies).
    pub fn auth(&self) -> &Auth {
        &self.auth
    }

    /// The claims of `token` if it is valid and its session was not signed
    /// out, here or on any instance. While the other instances cannot be
    /// reached, a session signed out there during the outage cannot be
    /// known: it fails closed (`AuthError::Unavailable`) unless this
    /// instance vouches for the session (a connection of it open here, or a
    /// check within [`VOUCH_FOR`]); a sign-out this instance knows of always
    /// counts.
    pub async fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let claims = self.auth.verify(token)?;
        match self.revocations.is_revoked(&claims.sid).await {
            Ok(true) => Err(AuthError::Invalid("the session was signed out".into())),
            Ok(false) => {
                self.checked_now(&claims.sid);
                Ok(claims)
            }
            Err(_) if self.vouches_for(&claims.sid) => Ok(claims),
            Err(_) => Err(AuthError::Unavailable),
        }
    }

    fn checked(&self) -> MutexGuard<'_, HashMap<String, Instant>> {
        // Each change is one insert or a retain.
        self.checked.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn checked_now(&self, sid: &str) {
        let mut checked = self.checked();
        if checked.len() >= 1024 {
            checked.retain(|_, at| at.elapsed() < VOUCH_FOR);
        }
        checked.insert(sid.to_string(), Instant::now());
    }

    /// Whether this instance vouches for session `sid` while it cannot ask.
    fn vouches_for(&self, sid: &str) -> bool {
        self.open().contains_key(sid)
            || self
                .checked()
                .get(sid)
                .is_some_and(|at| at.elapsed() < VOUCH_FOR)
    }

    /// Signs session `sid` (whose tokens could be valid until `until`) out
    /// everywhere: its tokens are refused from now on, and its open
    /// connections close, here at once and on every other instance.
    pub async fn sign_out(&self, sid: &str, until: u64) {
        self.on_revoked(sid);
        self.revocations.revoke(sid, until).await;
    }

    /// Session `sid` was signed out (here, or another instance says so):
    /// its connections here close.
    pub fn on_revoked(&self, sid: &str) {
        if let Some(open) = self.open().remove(sid) {
            open.signed_out.cancel();
        }
    }

    /// The link to the other instances is back: a sign-out told meanwhile
    /// may not have arrived, so the sessions open here are asked about.
    pub fn on_reconnected(&self) {
        self.recheck.notify_one();
    }

    fn open(&self) -> MutexGuard<'_, HashMap<Arc<str>, OpenSession>> {
        // Each update is one complete insert or remove.
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a connection of session `sid` until the hold is dropped.
    pub fn hold(self: &Arc<Self>, sid: &str) -> SessionHold {
        let mut open = self.open();
        let (sid, signed_out) = match open.get_key_value(sid) {
            Some((key, session)) => (key.clone(), session.signed_out.clone()),
            None => (Arc::from(sid), CancellationToken::new()),
        };
        open.entry(sid.clone())
            .or_insert_with(|| OpenSession {
                signed_out: signed_out.clone(),
                connections: 0,
            })
            .connections += 1;
        SessionHold {
            sessions: self.clone(),
            sid,
            signed_out,
        }
    }

    /// Asks about the open sessions after a reconnect, and forgets quiet
    /// sign-in limits, until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut upkeep = tokio::time::interval(UPKEEP);
        upkeep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = upkeep.tick() => {
                    self.auth.forget_quiet();
                    self.checked().retain(|_, at| at.elapsed() < VOUCH_FOR);
                }
                _ = self.recheck.notified() => {
                    let sids: Vec<String> = self.open().keys().map(|s| s.to_string()).collect();
                    if let Ok(revoked) = self.revocations.revoked_among(&sids).await {
                        for sid in revoked {
                            self.on_revoked(&sid);
                        }
                    }
                }
            }
        }
    }
}

impl SessionHold {
    /// Resolves once the session is signed out.
    pub fn signed_out(&self) -> &CancellationToken {
        &self.signed_out
    }
}

impl Drop for SessionHold {
    fn drop(&mut self) {
        let mut open = self.sessions.open();
        if let Some(session) = open.get_mut(&self.sid) {
            session.connections -= 1;
            if session.connections == 0 {
                open.remove(&self.sid);
            }
        }
    }
}
