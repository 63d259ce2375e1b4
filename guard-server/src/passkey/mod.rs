//! Passkeys (WebAuthn) for approvals: an approver registers passkeys, and an approval that
//! needs one (see [`PasskeyPolicy`]) carries a fresh, user-verified assertion made for that
//! request, by that approver, in the last two minutes, used once.
//!
//! The console calls this module; it knows neither HTTP nor the console's sessions. Each
//! ceremony is two calls: `start_*` returns the options for the browser's
//! `navigator.credentials` (JSON) and an opaque ceremony id; `finish_*` takes the browser's
//! answer (JSON) with that id. The ceremony's state stays here, on the server
//! (`ceremony.rs`: in memory, two minutes, single use; see there for several replicas).
//! [`SCRIPT`] is the browser side.
//!
//! What binds an assertion to a request: the challenge the authenticator signs is random and
//! known only to the ceremony, and the ceremony remembers the user, the request id and the
//! decision it was started for; `finish_approval` refuses any other user or request, and
//! returns the decision so the caller records exactly that one.
mod ceremony;
pub mod policy;

pub use ceremony::{CeremonyError, MAX_OPEN};
pub use policy::PasskeyPolicy;

use crate::error::GuardError;
use crate::lifecycle::now_ms;
use crate::store::passkeys::StoredPasskey;
use crate::store::Store;
use ceremony::Book;
use ring::rand::{SecureRandom, SystemRandom};
use std::sync::Arc;
use std::time::{Duration, Instant};
use webauthn_rs::prelude::{
    Passkey, PasskeyAuthentication, PasskeyRegistration, PublicKeyCredential, RegisterPublicKeyCredential, Url, Uuid,
    Webauthn, WebauthnBuilder, WebauthnError,
};

/// The browser side of both ceremonies, to be served as `guard-passkey.js` (no inline script:
/// the console's CSP forbids it). See the file's header for the markup it expects.
pub const SCRIPT: &str = include_str!("guard-passkey.js");

/// How long an approver has to answer a ceremony.
pub const CEREMONY_TTL: Duration = Duration::from_secs(120);

/// Longest passkey label kept.
const MAX_LABEL: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum PasskeyError {
    #[error("passkeys are misconfigured: {0}")]
    Config(String),
    #[error(transparent)]
    Ceremony(#[from] CeremonyError),
    #[error("this passkey confirmation was made for request {started_for}, not for {request}")]
    WrongRequest { started_for: String, request: String },
    #[error("{0} has no passkey registered: register one first (console: Passkeys)")]
    NoPasskey(String),
    #[error("the authenticator did not verify the user (PIN or biometric): a passkey approval needs it")]
    NotUserVerified,
    #[error("the browser's passkey answer is malformed: {0}")]
    Malformed(String),
    #[error("the passkey answer was refused: {0}")]
    Refused(WebauthnError),
    #[error("this passkey is registered already")]
    AlreadyRegistered,
    #[error(transparent)]
    Store(#[from] GuardError),
}

impl From<WebauthnError> for PasskeyError {
    fn from(e: WebauthnError) -> Self {
        match e {
            WebauthnError::UserNotVerified => PasskeyError::NotUserVerified,
            e => PasskeyError::Refused(e),
        }
    }
}

/// What a successful approval ceremony proves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasskeyApproval {
    pub user: String,
    pub request_id: String,
    /// The decision the ceremony was started for (as the caller summarised it): record this one.
    pub decision: String,
    /// The passkey that signed (base64url credential id).
    pub credential_id: String,
}

/// A passkey just registered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    pub credential_id: String,
    pub label: String,
}

struct Registration {
    handle: Uuid,
    state: PasskeyRegistration,
}

/// An open approval ceremony: for which request and decision, and webauthn-rs's state.
struct Pending<S> {
    request_id: String,
    decision: String,
    state: S,
}

pub struct Passkeys {
    webauthn: Webauthn,
    store: Arc<dyn Store>,
    rng: SystemRandom,
    registrations: Book<Registration>,
    approvals: Book<Pending<PasskeyAuthentication>>,
}

impl Passkeys {
    /// `rp_id` is the console's host name (the "relying party": passkeys are bound to it, so
    /// changing it later orphans every registered passkey); `origin` the console's public URL
    /// as browsers see it (`https://guard.example.com:8443`).
    pub fn new(rp_id: &str, origin: &str, store: Arc<dyn Store>) -> Result<Passkeys, PasskeyError> {
        let url = Url::parse(origin).map_err(|e| PasskeyError::Config(format!("origin {origin:?}: {e}")))?;
        let webauthn = WebauthnBuilder::new(rp_id, &url)
            .map_err(|_| {
                PasskeyError::Config(format!("rp_id {rp_id:?} is not the host (or a parent domain) of {origin:?}"))
            })?
            .rp_name("guard")
            .timeout(CEREMONY_TTL)
            .build()
            .map_err(|e| PasskeyError::Config(e.to_string()))?;
        Ok(Passkeys {
            webauthn,
            store,
            rng: SystemRandom::new(),
            registrations: Book::new(CEREMONY_TTL),
            approvals: Book::new(CEREMONY_TTL),
        })
    }

    fn ceremony_id(&self) -> Result<String, PasskeyError> {
        let mut bytes = [0u8; 16];
        self.rng.fill(&mut bytes).map_err(|_| PasskeyError::Config("no randomness".into()))?;
        Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// The user's passkeys as webauthn-rs's type (a row that no longer parses is an error, not
    /// silently dropped: it would lock the approver out without saying why).
    async fn load(&self, user: &str) -> Result<Vec<(StoredPasskey, Passkey)>, PasskeyError> {
        let rows = self.store.passkeys_of(user).await?;
        rows.into_iter()
            .map(|row| {
                let key: Passkey = serde_json::from_str(&row.passkey).map_err(|e| {
                    GuardError::Internal(format!("stored passkey {} of {user}: {e}", row.credential_id))
                })?;
                Ok((row, key))
            })
            .collect()
    }

    /// The user's registered passkeys (for the console's list).
    pub async fn list(&self, user: &str) -> Result<Vec<StoredPasskey>, PasskeyError> {
        Ok(self.store.passkeys_of(user).await?)
    }

    /// Starts registering a new passkey for `user`: the options for
    /// `navigator.credentials.create` (`{"publicKey": ...}`) and the ceremony id.
    pub async fn start_registration(&self, user: &str) -> Result<(serde_json::Value, String), PasskeyError> {
        let existing = self.load(user).await?;
        let handle = match existing.first() {
            Some((row, _)) => Uuid::parse_str(&row.user_handle)
                .map_err(|e| GuardError::Internal(format!("stored user handle of {user}: {e}")))?,
            None => {
                let mut bytes = [0u8; 16];
                self.rng.fill(&mut bytes).map_err(|_| PasskeyError::Config("no randomness".into()))?;
                Uuid::from_bytes(bytes)
            }
        };
        // The authenticator refuses to make a second passkey for this account on a device
        // that already holds one.
        let exclude = existing.iter().map(|(_, k)| k.cred_id().clone()).collect();
        let (options, state) = self.webauthn.start_passkey_registration(handle, user, user, Some(exclude))?;
        let id = self.ceremony_id()?;
        self.registrations.insert(Instant::now(), id.clone(), user, Registration { handle, state })?;
        Ok((to_json(&options)?, id))
    }

    /// Finishes a registration: checks the browser's answer against the ceremony (user
    /// verification required) and stores the passkey under `label`.
    pub async fn finish_registration(
        &self,
        user: &str,
        ceremony: &str,
        response: &str,
        label: &str,
    ) -> Result<Registered, PasskeyError> {
        let Registration { handle, state } = self.registrations.take(Instant::now(), ceremony, user)?;
        let answer: RegisterPublicKeyCredential =
            serde_json::from_str(response).map_err(|e| PasskeyError::Malformed(e.to_string()))?;
        let key = self.webauthn.finish_passkey_registration(&answer, &state)?;
        let label: String = label.trim().chars().filter(|c| !c.is_control()).take(MAX_LABEL).collect();
        let label = if label.is_empty() { "passkey".to_string() } else { label };
        let credential_id = credential_id(&key)?;
        let row = StoredPasskey {
            credential_id: credential_id.clone(),
            username: user.to_string(),
            user_handle: handle.to_string(),
            label: label.clone(),
            passkey: serde_json::to_string(&key).map_err(|e| GuardError::Internal(e.to_string()))?,
            created_ms: now_ms(),
            last_used_ms: 0,
        };
        match self.store.add_passkey(&row).await {
            Err(GuardError::FailedPrecondition { kind: "PASSKEY_REGISTERED", .. }) => {
                Err(PasskeyError::AlreadyRegistered)
            }
            other => other.map_err(PasskeyError::from),
        }?;
        Ok(Registered { credential_id, label })
    }

    /// Starts the step-up for `user` approving `request_id` with `decision` (the caller's
    /// summary, e.g. "approve for 10m"): the options for `navigator.credentials.get`
    /// (`{"publicKey": ...}`) and the ceremony id.
    pub async fn start_approval(
        &self,
        user: &str,
        request_id: &str,
        decision: &str,
    ) -> Result<(serde_json::Value, String), PasskeyError> {
        let keys: Vec<Passkey> = self.load(user).await?.into_iter().map(|(_, k)| k).collect();
        if keys.is_empty() {
            return Err(PasskeyError::NoPasskey(user.to_string()));
        }
        let (options, state) = self.webauthn.start_passkey_authentication(&keys)?;
        let id = self.ceremony_id()?;
        let pending = Pending { request_id: request_id.to_string(), decision: decision.to_string(), state };
        self.approvals.insert(Instant::now(), id.clone(), user, pending)?;
        Ok((to_json(&options)?, id))
    }

    /// Finishes the step-up: succeeds only for the user and the request the ceremony was
    /// started for, once, within [`CEREMONY_TTL`], with a user-verified assertion by one of
    /// the user's passkeys. Stores the passkey's new counter and backup state.
    pub async fn finish_approval(
        &self,
        user: &str,
        ceremony: &str,
        request_id: &str,
        response: &str,
    ) -> Result<PasskeyApproval, PasskeyError> {
        let pending = take_for_request(&self.approvals, Instant::now(), ceremony, user, request_id)?;
        let answer: PublicKeyCredential =
            serde_json::from_str(response).map_err(|e| PasskeyError::Malformed(e.to_string()))?;
        let result = self.webauthn.finish_passkey_authentication(&answer, &pending.state)?;
        // webauthn-rs already refuses an assertion without UV for passkeys; checked again
        // because this is the one property the approval's audit record claims.
        if !result.user_verified() {
            return Err(PasskeyError::NotUserVerified);
        }
        let mut used = None;
        for (row, mut key) in self.load(user).await? {
            if key.update_credential(&result).is_some() {
                let text = serde_json::to_string(&key).map_err(|e| GuardError::Internal(e.to_string()))?;
                self.store.update_passkey(&row.credential_id, &text, now_ms()).await?;
                used = Some(row.credential_id);
                break;
            }
        }
        // The passkey was removed between start and finish: it no longer speaks for the user.
        let Some(credential_id) = used else { return Err(PasskeyError::NoPasskey(user.to_string())) };
        Ok(PasskeyApproval {
            user: user.to_string(),
            request_id: request_id.to_string(),
            decision: pending.decision,
            credential_id,
        })
    }

    /// Removes one of `user`'s passkeys; false when they have none with that id.
    pub async fn remove(&self, user: &str, credential_id: &str) -> Result<bool, PasskeyError> {
        Ok(self.store.remove_passkey(user, credential_id).await?)
    }
}

/// Takes approval ceremony `id` for `user` and checks it was started for `request_id` (used up
/// either way: an assertion offered for another request is not offered twice).
fn take_for_request<S>(
    book: &Book<Pending<S>>,
    now: Instant,
    id: &str,
    user: &str,
    request_id: &str,
) -> Result<Pending<S>, PasskeyError> {
    let pending = book.take(now, id, user)?;
    if pending.request_id != request_id {
        return Err(PasskeyError::WrongRequest { started_for: pending.request_id, request: request_id.to_string() });
    }
    Ok(pending)
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<serde_json::Value, PasskeyError> {
    serde_json::to_value(value).map_err(|e| PasskeyError::Store(GuardError::Internal(e.to_string())))
}

/// The credential id as base64url text (how webauthn-rs writes it in JSON).
fn credential_id(key: &Passkey) -> Result<String, PasskeyError> {
    match to_json(key.cred_id())? {
        serde_json::Value::String(s) => Ok(s),
        other => Err(PasskeyError::Store(GuardError::Internal(format!("credential id as {other}")))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn book() -> Book<Pending<()>> {
        Book::new(CEREMONY_TTL)
    }

    fn pending(request: &str) -> Pending<()> {
        Pending { request_id: request.into(), decision: "approve once".into(), state: () }
    }

    #[test]
    fn an_approval_ceremony_is_for_one_request() {
        let b = book();
        let t0 = Instant::now();
        b.insert(t0, "c1".into(), "alice", pending("req-a")).unwrap();
        match take_for_request(&b, t0, "c1", "alice", "req-b") {
            Err(PasskeyError::WrongRequest { started_for, request }) => {
                assert_eq!((started_for.as_str(), request.as_str()), ("req-a", "req-b"))
            }
            other => panic!("want WrongRequest, got {:?}", other.map(|p| p.request_id)),
        }
        // The refused attempt used it up: the right request cannot reuse it afterwards.
        assert!(matches!(
            take_for_request(&b, t0, "c1", "alice", "req-a"),
            Err(PasskeyError::Ceremony(CeremonyError::Used(_)))
        ));
    }

    #[test]
    fn an_approval_ceremony_is_for_one_user_within_its_time() {
        let b = book();
        let t0 = Instant::now();
        b.insert(t0, "c1".into(), "alice", pending("req-a")).unwrap();
        b.insert(t0, "c2".into(), "alice", pending("req-a")).unwrap();
        b.insert(t0, "c3".into(), "alice", pending("req-a")).unwrap();
        assert!(matches!(
            take_for_request(&b, t0, "c1", "bob", "req-a"),
            Err(PasskeyError::Ceremony(CeremonyError::WrongUser { .. }))
        ));
        assert!(matches!(
            take_for_request(&b, t0 + CEREMONY_TTL, "c2", "alice", "req-a"),
            Err(PasskeyError::Ceremony(CeremonyError::Expired { .. }))
        ));
        let ok = take_for_request(&b, t0 + CEREMONY_TTL - Duration::from_millis(1), "c3", "alice", "req-a").unwrap();
        assert_eq!(ok.decision, "approve once");
    }

    #[test]
    fn errors_say_what_to_do() {
        let e = PasskeyError::WrongRequest { started_for: "A".into(), request: "B".into() };
        assert_eq!(e.to_string(), "this passkey confirmation was made for request A, not for B");
        assert!(PasskeyError::from(WebauthnError::UserNotVerified).to_string().contains("did not verify the user"));
    }

    #[test]
    fn the_relying_party_must_match_the_origin() {
        let store_less = |rp: &str, origin: &str| WebauthnBuilder::new(rp, &Url::parse(origin).unwrap()).is_ok();
        assert!(store_less("guard.example.com", "https://guard.example.com:8443"));
        assert!(!store_less("evil.example", "https://guard.example.com"));
    }
}
