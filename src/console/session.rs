//! Console sessions: an auditor signs in once with a bearer token the proxy's issuers verify;
//! the console then knows them by a session cookie until the token expires.
//!
//! Guarantees: a session ID is 244 random bits (two UUIDv4s), sent only as an `HttpOnly`,
//! `SameSite=Strict` cookie (`Secure` on a TLS console); a session ends at its token's `exp`
//! (never later) or at sign-out; every form carries the session's own random token, and a
//! POST without it is refused (no request made from another site acts in an auditor's name).
//! The token itself is not kept: only what it said (the actor, its device claim).

use std::collections::HashMap;
use std::sync::Mutex;

use crate::record::Actor;

/// The cookie that carries the session ID.
pub const COOKIE: &str = "auditgate_console";

/// One signed-in auditor.
#[derive(Debug, Clone)]
pub struct Session {
    /// Who, as the token said.
    pub actor: Actor,
    /// The token's device claim.
    pub device: Option<String>,
    /// The token's `exp` (seconds since the epoch): the session ends then.
    pub expires_at: u64,
    /// The form token every POST of this session must carry.
    pub form_token: String,
}

/// The open sessions.
#[derive(Default)]
pub struct Sessions {
    open: Mutex<HashMap<String, Session>>,
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn random_token() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

impl Sessions {
    /// Open a session; its ID.
    pub fn open(&self, actor: Actor, device: Option<String>, expires_at: u64) -> String {
        let id = random_token();
        let session = Session {
            actor,
            device,
            expires_at,
            form_token: random_token(),
        };
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = now_secs();
        open.retain(|_, s| s.expires_at > now);
        open.insert(id.clone(), session);
        id
    }

    /// The live session of `id` (an expired one is closed).
    pub fn get(&self, id: &str) -> Option<Session> {
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match open.get(id) {
            Some(s) if s.expires_at > now_secs() => Some(s.clone()),
            Some(_) => {
                open.remove(id);
                None
            }
            None => None,
        }
    }

    /// Close the session of `id`.
    pub fn close(&self, id: &str) {
        self.open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(id);
    }
}

/// Seconds from now until `expires_at` (seconds since the epoch), 0 if past.
pub fn seconds_until(expires_at: u64) -> u64 {
    expires_at.saturating_sub(now_secs())
}

/// The session ID a request's `Cookie` headers carry.
pub fn cookie_session(headers: &http::HeaderMap) -> Option<String> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_string())
}

/// The `Set-Cookie` value that opens a session for `seconds`.
pub fn set_cookie(id: &str, seconds: u64, secure: bool) -> String {
    format!(
        "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={seconds}{}",
        if secure { "; Secure" } else { "" }
    )
}

/// The `Set-Cookie` value that ends it.
pub fn clear_cookie(secure: bool) -> String {
    set_cookie("", 0, secure)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_ends_with_its_token_and_cookies_are_read_among_others() {
        let sessions = Sessions::default();
        let actor = Actor {
            user: "a".into(),
            ..Actor::default()
        };
        let live = sessions.open(actor.clone(), None, now_secs() + 60);
        let gone = sessions.open(actor, None, now_secs() - 1);
        assert!(sessions.get(&live).is_some());
        assert!(sessions.get(&gone).is_none(), "expired with its token");
        assert_eq!(live.len(), 64);
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::COOKIE,
            format!("other=1; {COOKIE}={live}; x=2").parse().unwrap(),
        );
        assert_eq!(cookie_session(&headers).as_deref(), Some(live.as_str()));
        sessions.close(&live);
        assert!(sessions.get(&live).is_none());
        assert!(set_cookie("abc", 5, true).ends_with("Max-Age=5; Secure"));
    }
}
