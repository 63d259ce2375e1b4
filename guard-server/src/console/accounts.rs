//! Console users and sessions: roles, argon2id passwords, sign-in with lockout, and sessions
//! whose id only the browser holds (the database keeps its SHA-256). The rows are the store's
//! (`store::accounts`); the rules are here.
use super::config::ConsoleSettings;
use crate::error::{GuardError, GuardResult};
use crate::lifecycle::MAX_NAME_BYTES;
use crate::store::accounts::{Session, User};
use crate::store::Store;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use guard_api::{AuditRecord, Reason, RecordKind, Timestamp};
use std::sync::OnceLock;

/// Shortest password `user add` and `user passwd` accept.
pub const MIN_PASSWORD_CHARS: usize = 10;
/// Longest: argon2 would take any length, but nobody types more and it bounds the work.
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// What a console user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Decides requests of the hosts the policy assigns them to, sees those hosts' history,
    /// revokes the grants they made or that are on their hosts.
    Approver,
    /// Reads everything (history, export, chain status) and revokes any grant; decides nothing.
    Admin,
    /// Reads everything; changes nothing.
    Auditor,
}

impl Role {
    pub const NAMES: &'static str = "approver, admin or auditor";

    pub fn parse(text: &str) -> Option<Role> {
        match text {
            "approver" => Some(Role::Approver),
            "admin" => Some(Role::Admin),
            "auditor" => Some(Role::Auditor),
            _ => None,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Role::Approver => "approver",
            Role::Admin => "admin",
            Role::Auditor => "auditor",
        }
    }
}

/// A signed-in user, as every page sees them.
#[derive(Debug, Clone)]
pub struct Account {
    pub name: String,
    pub role: Role,
    pub session: Session,
}

/// A user name as the console and the policy accept it: the approver name of certificates
/// and `[[require]]` lists, so plain characters only.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME_BYTES {
        return Err(format!("a user name has 1 to {MAX_NAME_BYTES} bytes"));
    }
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c)) {
        return Err(format!(
            "user name {:?}: use letters, digits, '-', '_', '.', '@'",
            guard_api::screen::escape(name)
        ));
    }
    Ok(())
}

pub fn check_password(password: &str) -> Result<(), String> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(format!("the password is shorter than {MIN_PASSWORD_CHARS} characters"));
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(format!("the password is longer than {MAX_PASSWORD_BYTES} bytes"));
    }
    Ok(())
}

/// argon2id (the crate's defaults, OWASP's minimum: 19 MiB, 2 passes) with a random salt, as
/// a PHC string.
pub fn hash_password(password: &str) -> Result<String, String> {
    let mut salt = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut salt).map_err(|_| "no randomness")?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
    Argon2::default().hash_password(password.as_bytes(), &salt).map(|h| h.to_string()).map_err(|e| e.to_string())
}

/// Whether `password` matches `hash` (a stored PHC string; a malformed one matches nothing).
pub fn verify_password(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
}

/// A hash no password matches, verified for unknown users so that their answer takes as long
/// as a known user's (the time would tell which names exist).
fn decoy_hash() -> &'static str {
    static DECOY: OnceLock<String> = OnceLock::new();
    DECOY.get_or_init(|| hash_password(&random_hex(16)).unwrap_or_default())
}

/// `bytes` random bytes as lower-case hex.
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    // The system CSPRNG does not fail on Linux once booted; an all-zero id would be refused by
    // nobody, so fail loudly instead.
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut buf).expect("system randomness");
    hex(&buf)
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of a session id, as stored.
pub fn id_hash(id: &str) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, id.as_bytes()).as_ref())
}

/// Equality that takes as long whatever the first difference (tokens from the network).
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Why a sign-in failed, for the audit trail only: the person signing in is told the same
/// thing whatever it was, so the page does not say which names exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    UnknownUser,
    Disabled,
    Locked { until_ms: i64 },
    WrongPassword { failures: u32, locked_until_ms: Option<i64> },
}

/// What the sign-in page says for every refusal.
pub const SIGN_IN_REFUSED: &str = "Sign-in failed: wrong user name or password, or the account is locked after too \
     many failures (wait, or ask an admin).";

/// Signs `name` in with `password`: a new session (its id, for the cookie, and its row), or
/// the refusal, which is recorded in the audit trail.
pub async fn sign_in(
    store: &dyn Store,
    settings: &ConsoleSettings,
    name: &str,
    password: &str,
    now_ms: i64,
) -> GuardResult<Result<(String, Account), Refusal>> {
    let user = if check_name(name).is_ok() { store.user(name).await? } else { None };
    let hash = user.as_ref().map(|u| u.password_hash.clone()).unwrap_or_else(|| decoy_hash().to_string());
    // argon2 takes tens of milliseconds of CPU: off the async threads.
    let given = password.to_string();
    let matches = tokio::task::spawn_blocking(move || verify_password(&hash, &given))
        .await
        .map_err(|e| GuardError::Internal(format!("password check: {e}")))?;
    let refusal = match &user {
        None => Some(Refusal::UnknownUser),
        Some(u) if u.disabled => Some(Refusal::Disabled),
        Some(u) if u.locked_until_ms > now_ms => Some(Refusal::Locked { until_ms: u.locked_until_ms }),
        Some(_) if !matches => {
            let lock_ms = i64::try_from(settings.lockout_for.as_millis()).unwrap_or(i64::MAX);
            let failure = store.sign_in_failed(name, now_ms, settings.lockout_failures, lock_ms).await?;
            let failure = failure.unwrap_or(crate::store::accounts::Failure { failures: 0, locked_until_ms: None });
            Some(Refusal::WrongPassword { failures: failure.failures, locked_until_ms: failure.locked_until_ms })
        }
        Some(_) => None,
    };
    let role = user.as_ref().and_then(|u| Role::parse(&u.role));
    match (refusal, user, role) {
        (Some(refusal), _, _) => {
            record_refusal(store, settings, name, &refusal, PASSWORD, now_ms).await;
            Ok(Err(refusal))
        }
        (None, Some(user), Some(role)) => {
            store.sign_in_succeeded(&user.name).await?;
            Ok(Ok(open_session(store, settings, &user.name, role, PASSWORD, now_ms).await?))
        }
        (None, Some(user), None) => {
            Err(GuardError::Internal(format!("console user {} has an unknown role {:?}", user.name, user.role)))
        }
        (None, None, _) => Err(GuardError::Internal("a sign-in without a user".into())),
    }
}

/// `Session::method` of a session opened with a password...
pub const PASSWORD: &str = "password";
/// ...and of one opened through the OpenID provider (`[console.oidc]`).
pub const OIDC: &str = "oidc";

/// A new session of `name` (its id, for the cookie, and the account), opened by `method`;
/// stale sessions are swept on the way.
async fn open_session(
    store: &dyn Store,
    settings: &ConsoleSettings,
    name: &str,
    role: Role,
    method: &str,
    now_ms: i64,
) -> GuardResult<(String, Account)> {
    let idle = i64::try_from(settings.session_idle.as_millis()).unwrap_or(i64::MAX);
    let max = i64::try_from(settings.session_max.as_millis()).unwrap_or(i64::MAX);
    store.delete_stale_sessions(now_ms.saturating_sub(idle), now_ms.saturating_sub(max)).await?;
    let id = random_hex(32);
    let session = Session {
        id_hash: id_hash(&id),
        user: name.to_string(),
        csrf: random_hex(32),
        created_ms: now_ms,
        last_seen_ms: now_ms,
        method: method.to_string(),
    };
    store.create_session(&session).await?;
    Ok((id, Account { name: name.to_string(), role, session }))
}

/// Signs `name` in on the word of the OpenID provider (its ID token was checked by
/// `console::oidc`): a new session if `name` is an existing, enabled console user, or the
/// refusal, recorded in the audit trail as a password refusal is. The role is the local
/// user's; the password lockout does not apply (it guards against guessed passwords, and a
/// stranger's guesses must not shut a user out of the provider's sign-in too).
pub async fn sign_in_oidc(
    store: &dyn Store,
    settings: &ConsoleSettings,
    name: &str,
    now_ms: i64,
) -> GuardResult<Result<(String, Account), Refusal>> {
    let user = if check_name(name).is_ok() { store.user(name).await? } else { None };
    let refusal = match &user {
        None => Some(Refusal::UnknownUser),
        Some(u) if u.disabled => Some(Refusal::Disabled),
        Some(_) => None,
    };
    if let Some(refusal) = refusal {
        record_refusal(store, settings, name, &refusal, OIDC, now_ms).await;
        return Ok(Err(refusal));
    }
    let user = user.ok_or_else(|| GuardError::Internal("a sign-in without a user".into()))?;
    let role = Role::parse(&user.role).ok_or_else(|| {
        GuardError::Internal(format!("console user {} has an unknown role {:?}", user.name, user.role))
    })?;
    Ok(Ok(open_session(store, settings, &user.name, role, OIDC, now_ms).await?))
}

/// The audit record of an OpenID sign-in refused before any user was looked up (the
/// provider's token did not check out): `tried` is the claim, when the token had one.
pub async fn record_oidc_refusal(store: &dyn Store, tried: &str, why: &str, now_ms: i64) {
    let mut r = AuditRecord::at(Timestamp::from_unix_ms(now_ms), RecordKind::Review, "");
    r.reason = Some(Reason::Refused);
    let shown: String = guard_api::screen::escape(tried).chars().take(MAX_NAME_BYTES).collect();
    r.approver = Some(shown);
    let why: String = guard_api::screen::escape(why).chars().take(500).collect();
    r.comment = Some(format!("console sign-in refused (oidc): {why}"));
    r.state = Some("refused".into());
    if let Err(e) = store.append_server(vec![r]).await {
        tracing::error!("cannot record a refused console sign-in: {e}");
    }
}

/// The account whose session id is `id`, if the session is live; an expired one is deleted.
pub async fn authenticate(
    store: &dyn Store,
    settings: &ConsoleSettings,
    id: &str,
    now_ms: i64,
) -> GuardResult<Option<Account>> {
    if id.len() != 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(None);
    }
    let hash = id_hash(id);
    let Some(session) = store.session(&hash).await? else { return Ok(None) };
    let idle = i64::try_from(settings.session_idle.as_millis()).unwrap_or(i64::MAX);
    let max = i64::try_from(settings.session_max.as_millis()).unwrap_or(i64::MAX);
    if now_ms.saturating_sub(session.last_seen_ms) > idle || now_ms.saturating_sub(session.created_ms) > max {
        store.delete_session(&hash).await?;
        return Ok(None);
    }
    let Some(user) = store.user(&session.user).await? else { return Ok(None) };
    let Some(role) = Role::parse(&user.role).filter(|_| !user.disabled) else {
        store.delete_session(&hash).await?;
        return Ok(None);
    };
    // A write per page view would be wasteful: a minute's precision is enough for idle expiry.
    if now_ms - session.last_seen_ms > 60_000 {
        store.touch_session(&hash, now_ms).await?;
    }
    Ok(Some(Account { name: user.name, role, session }))
}

/// Whether `account`'s session still stands (not signed out, expired, or its user disabled):
/// what a long-lived event stream checks before it sends anything more.
pub async fn still_signed_in(store: &dyn Store, settings: &ConsoleSettings, account: &Account, now_ms: i64) -> bool {
    let hash = &account.session.id_hash;
    let Ok(Some(session)) = store.session(hash).await else { return false };
    let idle = i64::try_from(settings.session_idle.as_millis()).unwrap_or(i64::MAX);
    let max = i64::try_from(settings.session_max.as_millis()).unwrap_or(i64::MAX);
    // An open stream is not a person at work: it does not keep the session alive, and ends
    // when the session goes idle like any page would.
    if now_ms.saturating_sub(session.created_ms) > max || now_ms.saturating_sub(session.last_seen_ms) > idle {
        return false;
    }
    matches!(store.user(&account.name).await, Ok(Some(u)) if !u.disabled)
}

/// The audit record of a refused sign-in (and of the lockout it caused): a review-kind record
/// of the server (host ""), reason refused, `approver` the name that was tried.
async fn record_refusal(
    store: &dyn Store,
    settings: &ConsoleSettings,
    name: &str,
    refusal: &Refusal,
    method: &str,
    now_ms: i64,
) {
    let until = |ms: i64| Timestamp::from_unix_ms(ms).to_string();
    let why = match refusal {
        Refusal::UnknownUser => "no such user".to_string(),
        Refusal::Disabled => "the account is disabled".to_string(),
        Refusal::Locked { until_ms } => format!("the account is locked until {}", until(*until_ms)),
        Refusal::WrongPassword { failures, locked_until_ms: None } => {
            format!("wrong password ({failures} of {} before lockout)", settings.lockout_failures)
        }
        Refusal::WrongPassword { locked_until_ms: Some(t), .. } => format!(
            "wrong password; {} failures in a row: the account is locked until {}",
            settings.lockout_failures,
            until(*t)
        ),
    };
    let mut r = AuditRecord::at(Timestamp::from_unix_ms(now_ms), RecordKind::Review, "");
    r.reason = Some(Reason::Refused);
    // Whatever was typed, cut to a name's length and made printable: it is the tree's
    // adversary's text as much as anyone's.
    let shown: String = guard_api::screen::escape(name).chars().take(MAX_NAME_BYTES).collect();
    r.approver = Some(shown);
    r.comment = Some(if method == OIDC {
        format!("console sign-in refused (oidc): {why}")
    } else {
        format!("console sign-in refused: {why}")
    });
    r.state = Some(if matches!(refusal, Refusal::WrongPassword { locked_until_ms: Some(_), .. }) {
        "locked".into()
    } else {
        "refused".into()
    });
    if let Err(e) = store.append_server(vec![r]).await {
        tracing::error!("cannot record a refused console sign-in: {e}");
    }
}

/// `user add`: a new user with `password` (checked here); an error names what is wrong.
pub async fn add_user(store: &dyn Store, name: &str, role: Role, password: &str, now_ms: i64) -> anyhow::Result<()> {
    check_name(name).map_err(anyhow::Error::msg)?;
    check_password(password).map_err(anyhow::Error::msg)?;
    let password_hash = hash_password(password).map_err(anyhow::Error::msg)?;
    let user = User {
        name: name.to_string(),
        role: role.label().to_string(),
        password_hash,
        disabled: false,
        failures: 0,
        locked_until_ms: 0,
        created_ms: now_ms,
    };
    anyhow::ensure!(
        store.create_user(&user).await?,
        "a user named {name} exists already (user passwd changes a password)"
    );
    Ok(())
}

/// `user passwd`.
pub async fn change_password(store: &dyn Store, name: &str, password: &str, now_ms: i64) -> anyhow::Result<()> {
    check_password(password).map_err(anyhow::Error::msg)?;
    let hash = hash_password(password).map_err(anyhow::Error::msg)?;
    anyhow::ensure!(store.set_password(name, &hash, now_ms).await?, "no user named {name}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_hash_with_argon2id_and_verify() {
        let hash = hash_password("correct horse battery").unwrap();
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(verify_password(&hash, "correct horse battery"));
        assert!(!verify_password(&hash, "correct horse battery!"));
        assert!(!verify_password("not a hash", "anything"));
        assert_ne!(hash, hash_password("correct horse battery").unwrap(), "salted");
    }

    #[test]
    fn names_and_passwords_are_checked() {
        assert!(check_name("alice").is_ok() && check_name("a.b-c_d@e").is_ok());
        assert!(check_name("").is_err() && check_name("a b").is_err() && check_name("<script>").is_err());
        assert!(check_password("short").is_err() && check_password("long enough!").is_ok());
    }

    #[test]
    fn ids_are_random_and_hashed() {
        let (a, b) = (random_hex(32), random_hex(32));
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
        assert_eq!(id_hash(&a).len(), 64);
        assert_ne!(id_hash(&a), a);
        assert!(same(&a, &a) && !same(&a, &b) && !same("a", "ab"));
    }
}
