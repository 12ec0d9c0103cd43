//! Sign-in sessions across instances: a token is good only while its
//! session has not been signed out, here or on any instance; signing out
//! closes the session's open sockets everywhere (close code 4001).
//!
//! [`Auth`] checks tokens and remembers the sessions this instance knows
//! to be signed out; the bus tells the other instances (and keeps the
//! sign-out in Redis for instances that start later).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::server::auth::{Auth, AuthError, Claims};
use crate::server::bus::{Bus, BusEvent, Incoming};

/// How often signed-out sessions whose tokens have expired anyway are forgotten.
const UPKEEP: Duration = Duration::from_secs(10);

/// The sessions service.
pub struct Sessions {
    /// Checks and issues tokens; remembers sign-outs.
    auth: Arc<Auth>,
    /// The other instances.
    bus: Bus,
    /// The sessions with sockets open on this instance, to close those
    /// sockets when the session is signed out.
    open: Mutex<HashMap<Arc<str>, OpenSession>>,
}

/// A session with sockets open on this instance.
struct OpenSession {
    /// Cancelled when the session is signed out: its sockets close.
    signed_out: CancellationToken,
    /// How many sockets it has here.
    sockets: usize,
}

/// A socket's hold on its session: the signal that it was signed out; the
/// session is forgotten with its last socket.
pub struct SessionHold {
    /// Where the hold is counted.
    sessions: Arc<Sessions>,
    /// The session id.
    sid: Arc<str>,
    /// Cancelled when the session is signed out.
    signed_out: CancellationToken,
}

impl Sessions {
    /// Sessions of tokens checked by `auth`, signed out across `bus`.
    pub fn new(auth: Arc<Auth>, bus: Bus) -> Sessions {
        Sessions {
            auth,
            bus,
            open: Mutex::new(HashMap::new()),
        }
    }

    /// The token service (sign-in limits, issuing, cookies).
    pub fn auth(&self) -> &Auth {
        &self.auth
    }

    /// The claims of `token` if it is valid and its session was not signed
    /// out, here or (with Redis) on any instance.
    pub async fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let claims = self.auth.verify(token)?;
        if self.bus.is_revoked(&claims.sid).await {
            self.auth.revoke(&claims.sid, claims.exp);
            return Err(AuthError::Invalid("the session was signed out".into()));
        }
        Ok(claims)
    }

    /// Signs session `sid` (whose tokens expire at `exp`) out everywhere: its
    /// token is refused from now on, and its open sockets close, on this
    /// instance and (through the bus) on every other.
    pub fn sign_out(&self, sid: &str, exp: u64) {
        self.bus.revoke(sid, exp);
        self.signed_out(sid, exp);
    }

    /// Session `sid` was signed out (here, or another instance says so).
    fn signed_out(&self, sid: &str, exp: u64) {
        self.auth.revoke(sid, exp);
        if let Some(open) = self.open().remove(sid) {
            open.signed_out.cancel();
        }
    }

    fn open(&self) -> MutexGuard<'_, HashMap<Arc<str>, OpenSession>> {
        // Each update is one complete insert or remove.
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a socket of session `sid` until the hold is dropped.
    pub fn hold(self: &Arc<Self>, sid: &str) -> SessionHold {
        let mut open = self.open();
        let (sid, signed_out) = match open.get_key_value(sid) {
            Some((key, session)) => (key.clone(), session.signed_out.clone()),
            None => (Arc::from(sid), CancellationToken::new()),
        };
        open.entry(sid.clone())
            .or_insert_with(|| OpenSession {
                signed_out: signed_out.clone(),
                sockets: 0,
            })
            .sockets += 1;
        SessionHold {
            sessions: self.clone(),
            sid,
            signed_out,
        }
    }

    /// Applies sign-outs from other instances, and forgets expired ones,
    /// until `shutdown`.
    pub async fn run(self: Arc<Self>, mut incoming: Incoming, shutdown: CancellationToken) {
        let mut upkeep = tokio::time::interval(UPKEEP);
        upkeep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = upkeep.tick() => self.auth.forget_expired(),
                event = incoming.recv() => match event.as_deref() {
                    Some(BusEvent::Revoked { sid, exp }) => self.signed_out(sid, *exp),
                    Some(_) => {}
                    None => return,
                },
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
            session.sockets -= 1;
            if session.sockets == 0 {
                open.remove(&self.sid);
            }
        }
    }
}
