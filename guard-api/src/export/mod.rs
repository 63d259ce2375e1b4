//! guard's audit record in the formats SIEMs ingest without a custom parser.
//!
//! One [`AuditRecord`] in, one line out: [`Format::encode_line`] is what an export command or a
//! sink calls. Each format lives in its own module ([`ocsf`], [`ecs`], [`cef`]); what they
//! share is here: the outcome of a record ([`Outcome`]: allowed, blocked, approved, rejected,
//! pending, or noted when it decides nothing), what an agent event is ([`AgentEvent`]), and
//! its severity, so that the three formats never disagree about what happened.
//!
//! Not wired yet (issue 11): the sinks, `guardctl audit export`, and the hash chain's fields
//! (the record does not carry a sequence number, hash or signature yet; see
//! [`ocsf::Attestation`] for where they go when it does).

pub mod cef;
pub mod ecs;
pub mod ocsf;

use crate::record::{Action, AuditRecord, Decision, Hook, Reason, RecordKind};
use std::fmt;

pub use ocsf::OcsfVersion;

/// The formats guard exports its audit records in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// OCSF JSON of the given schema version.
    Ocsf(OcsfVersion),
    /// Elastic Common Schema JSON.
    Ecs,
    /// ArcSight Common Event Format.
    Cef,
    /// guard's own record as it is (the agent's JSONL).
    Jsonl,
}

impl Format {
    /// One record as one line of text, without the newline. Every format escapes what the
    /// watched tree controls (argv, paths, stated reasons) so a record can never span lines.
    pub fn encode_line(&self, r: &AuditRecord) -> String {
        match self {
            Format::Ocsf(v) => ocsf::encode(r, *v).to_string(),
            Format::Ecs => ecs::encode(r).to_string(),
            Format::Cef => cef::encode(r),
            Format::Jsonl => r.to_json(),
        }
    }

    /// The format named on a command line: `ocsf` (the newest OCSF), `ocsf-1.5`, `ecs`, `cef`,
    /// `jsonl`.
    pub fn parse(name: &str) -> Result<Format, UnknownFormat> {
        Ok(match name {
            "ocsf" => Format::Ocsf(OcsfVersion::CURRENT),
            "ecs" => Format::Ecs,
            "cef" => Format::Cef,
            "jsonl" => Format::Jsonl,
            other => match other.strip_prefix("ocsf-").and_then(OcsfVersion::parse) {
                Some(v) => Format::Ocsf(v),
                None => return Err(UnknownFormat(name.to_string())),
            },
        })
    }
}

/// A format name [`Format::parse`] does not know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownFormat(pub String);

impl fmt::Display for UnknownFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown audit format {:?}: expected ocsf, ocsf-1.9, ocsf-1.5, ecs, cef or jsonl", self.0)
    }
}

impl std::error::Error for UnknownFormat {}

/// What came of the operation a record is about, in the terms SIEMs use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Allowed by a rule, the default, a grant or an auto rule, without a person.
    Allowed,
    /// Denied without a person deciding: a rule, the default, the tamper baseline, a
    /// fail-closed path (unresolvable, ring full, expired, unreachable...).
    Blocked,
    /// A person approved it (a hold approved, or an approver's review that approves).
    Approved,
    /// A person denied it.
    Rejected,
    /// Nothing decided yet (a request just created).
    Pending,
    /// Nothing to decide: the record notes an event of guard itself or of its trail (a grant
    /// ended, a policy loaded, a checkpoint, the agent started or stopped, its spool damaged),
    /// or an attempt the server refused (which changed nothing).
    Noted,
}

impl Outcome {
    pub fn of(r: &AuditRecord) -> Outcome {
        let by_person = r.kind == RecordKind::Review;
        let about_guard =
            matches!(r.kind, RecordKind::Agent | RecordKind::Grant | RecordKind::Policy | RecordKind::Checkpoint);
        if r.decision.is_none() && (about_guard || r.reason == Some(Reason::Refused)) {
            return Outcome::Noted;
        }
        match (r.decision, r.reason) {
            (None, _) => Outcome::Pending,
            (Some(Decision::Allow), Some(Reason::Approved)) => Outcome::Approved,
            (Some(Decision::Allow), _) if by_person => Outcome::Approved,
            (Some(Decision::Allow), _) => Outcome::Allowed,
            (Some(Decision::Deny), Some(Reason::Denied)) => Outcome::Rejected,
            (Some(Decision::Deny), _) if by_person => Outcome::Rejected,
            (Some(Decision::Deny), _) => Outcome::Blocked,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::Blocked => "blocked",
            Outcome::Approved => "approved",
            Outcome::Rejected => "rejected",
            Outcome::Pending => "pending",
            Outcome::Noted => "noted",
        }
    }

    /// Whether the operation went ahead (None: not decided yet).
    pub fn went_ahead(self) -> Option<bool> {
        match self {
            Outcome::Allowed | Outcome::Approved => Some(true),
            Outcome::Blocked | Outcome::Rejected => Some(false),
            Outcome::Pending | Outcome::Noted => None,
        }
    }
}

/// How much a record needs a person's attention, on OCSF's scale (1 informational .. 5
/// critical); ECS and CEF scale it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Informational = 1,
    Low = 2,
    Medium = 3,
    High = 4,
}

impl Severity {
    pub fn of(r: &AuditRecord) -> Severity {
        match r.reason {
            // Someone tried to switch guard off, or the audit trail itself lost events.
            Some(Reason::Tamper | Reason::EventsLost | Reason::RingFull) => Severity::High,
            // The agent's own audit trail is damaged or about to drop records.
            _ if matches!(AgentEvent::of(r), Some(AgentEvent::SpoolDamaged | AgentEvent::BacklogFull)) => {
                Severity::High
            }
            // Someone tried what they may not (or too late): worth a look, not an alarm.
            Some(Reason::Refused) if r.decision.is_none() => Severity::Low,
            _ => match Outcome::of(r) {
                Outcome::Blocked | Outcome::Rejected => Severity::Medium,
                // An `audit` rule matched: allowed, but the policy asked for it to be seen.
                Outcome::Allowed if r.action == Some(Action::Audit) => Severity::Low,
                Outcome::Allowed | Outcome::Approved | Outcome::Pending | Outcome::Noted => Severity::Informational,
            },
        }
    }
}

/// What an agent record without a hook is about, by its `object` (the agent writes these).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentEvent {
    /// `start`: the agent started enforcing.
    Start,
    /// `stop`: the agent stopped.
    Stop,
    /// `spool_damaged`: the agent found its spool damaged and recovered what it could.
    SpoolDamaged,
    /// `backlog_full`: the spool's backlog reached its bound.
    BacklogFull,
}

impl AgentEvent {
    pub fn of(r: &AuditRecord) -> Option<AgentEvent> {
        if r.kind != RecordKind::Agent || r.hook.is_some() {
            return None;
        }
        match r.object.as_deref()? {
            "start" => Some(AgentEvent::Start),
            "stop" => Some(AgentEvent::Stop),
            "spool_damaged" => Some(AgentEvent::SpoolDamaged),
            "backlog_full" => Some(AgentEvent::BacklogFull),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            AgentEvent::Start => "start",
            AgentEvent::Stop => "stop",
            AgentEvent::SpoolDamaged => "spool_damaged",
            AgentEvent::BacklogFull => "backlog_full",
        }
    }
}

/// What an event is called where a hook would name it: the hook, an agent event
/// (`agent.start`), or the record's kind.
pub(crate) fn event_name(r: &AuditRecord) -> String {
    match (r.hook, AgentEvent::of(r)) {
        (Some(h), _) => h.name().to_string(),
        (None, Some(a)) => format!("agent.{}", a.name()),
        (None, None) => kind_name(r.kind).to_string(),
    }
}

/// The network destination of a connect or send: `addr:port`, `[v6]:port`, or a unix socket's
/// path (`/run/x.sock`, `@abstract`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination<'a> {
    Inet { ip: &'a str, port: u16 },
    Unix(&'a str),
}

impl<'a> Destination<'a> {
    pub fn of(r: &'a AuditRecord) -> Option<Destination<'a>> {
        if !is_network(r.hook?) {
            return None;
        }
        let o = r.object.as_deref()?;
        if o.starts_with('/') || o.starts_with('@') {
            return Some(Destination::Unix(o));
        }
        let (host, port) = o.rsplit_once(':')?;
        let port = port.parse().ok()?;
        let ip = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        ip.parse::<std::net::IpAddr>().ok()?;
        Some(Destination::Inet { ip, port })
    }
}

/// The hooks whose object is a network peer.
pub fn is_network(h: Hook) -> bool {
    matches!(h, Hook::SocketConnect | Hook::SocketSendmsg | Hook::UnixStreamConnect | Hook::UnixMaySend)
}

/// The hooks whose object is a path in the file system.
pub fn is_file(h: Hook) -> bool {
    matches!(
        h,
        Hook::FileOpen
            | Hook::PathMknod
            | Hook::PathMkdir
            | Hook::PathUnlink
            | Hook::PathRmdir
            | Hook::PathRename
            | Hook::PathTruncate
            | Hook::PathLink
            | Hook::PathSymlink
            | Hook::PathChmod
            | Hook::PathChown
            | Hook::InodeSetxattr
            | Hook::InodeRemovexattr
            | Hook::InodeSetAcl
            | Hook::InodeRemoveAcl
            | Hook::PathChroot
            | Hook::SbPivotroot
            | Hook::SbMount
            | Hook::MoveMount
            | Hook::SbUmount
            | Hook::FileReceive
            | Hook::MmapFile
    )
}

/// The record kind as written in records.
pub(crate) fn kind_name(k: RecordKind) -> &'static str {
    match k {
        RecordKind::Enforcement => "enforcement",
        RecordKind::Agent => "agent",
        RecordKind::Request => "request",
        RecordKind::Review => "review",
        RecordKind::Decision => "decision",
        RecordKind::Grant => "grant",
        RecordKind::Policy => "policy",
        RecordKind::Checkpoint => "checkpoint",
    }
}

/// The last component of a path (`/usr/bin/git` -> `git`).
pub(crate) fn base_name(path: &str) -> &str {
    path.trim_end_matches('/').rsplit('/').next().filter(|s| !s.is_empty()).unwrap_or(path)
}

/// argv as one command line, each argument that needs it in single quotes, so a reader can
/// tell `rm "a b"` from `rm a b`.
pub(crate) fn command_line(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            if !a.is_empty() && a.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c)) {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::Timestamp;

    fn rec(kind: RecordKind, decision: Option<Decision>, reason: Option<Reason>) -> AuditRecord {
        let mut r = AuditRecord::at(Timestamp::from_unix_ms(0), kind, "h");
        r.decision = decision;
        r.reason = reason;
        r
    }

    #[test]
    fn outcomes_tell_a_person_from_a_rule() {
        use Decision::{Allow, Deny};
        use RecordKind::{Enforcement, Request, Review};
        assert_eq!(Outcome::of(&rec(Enforcement, Some(Allow), Some(Reason::Rule))), Outcome::Allowed);
        assert_eq!(Outcome::of(&rec(Enforcement, Some(Allow), Some(Reason::Approved))), Outcome::Approved);
        assert_eq!(Outcome::of(&rec(Enforcement, Some(Deny), Some(Reason::Denied))), Outcome::Rejected);
        assert_eq!(Outcome::of(&rec(Enforcement, Some(Deny), Some(Reason::Expired))), Outcome::Blocked);
        assert_eq!(Outcome::of(&rec(Review, Some(Allow), None)), Outcome::Approved);
        assert_eq!(Outcome::of(&rec(Review, Some(Deny), None)), Outcome::Rejected);
        assert_eq!(Outcome::of(&rec(Request, None, None)), Outcome::Pending);
        assert_eq!(Outcome::of(&rec(Review, None, Some(Reason::Refused))), Outcome::Noted, "a refused review");
        assert_eq!(Outcome::of(&rec(RecordKind::Grant, None, Some(Reason::Expired))), Outcome::Noted);
        assert_eq!(Outcome::of(&rec(RecordKind::Grant, Some(Allow), Some(Reason::Approved))), Outcome::Approved);
        assert_eq!(Outcome::of(&rec(RecordKind::Policy, None, None)), Outcome::Noted);
        assert_eq!(Outcome::of(&rec(RecordKind::Agent, None, None)), Outcome::Noted);
    }

    #[test]
    fn agent_events_are_named_by_their_object_and_a_damaged_spool_is_an_alarm() {
        let mut r = rec(RecordKind::Agent, None, None);
        r.object = Some("spool_damaged".into());
        assert_eq!(
            (AgentEvent::of(&r), event_name(&r).as_str()),
            (Some(AgentEvent::SpoolDamaged), "agent.spool_damaged")
        );
        assert_eq!(Severity::of(&r), Severity::High);
        r.object = Some("start".into());
        assert_eq!((AgentEvent::of(&r), Severity::of(&r)), (Some(AgentEvent::Start), Severity::Informational));
        r.hook = Some(Hook::RingBuffer);
        assert_eq!(AgentEvent::of(&r), None, "a record with a hook is about the hook");
        r.hook = None;
        r.object = Some("something else".into());
        assert_eq!((AgentEvent::of(&r), event_name(&r).as_str()), (None, "agent"));
    }

    #[test]
    fn destinations_parse_v4_v6_and_unix_and_refuse_the_rest() {
        let mut r = rec(RecordKind::Enforcement, Some(Decision::Deny), None);
        r.hook = Some(Hook::SocketConnect);
        r.object = Some("10.0.0.1:443".into());
        assert_eq!(Destination::of(&r), Some(Destination::Inet { ip: "10.0.0.1", port: 443 }));
        r.object = Some("[::1]:22".into());
        assert_eq!(Destination::of(&r), Some(Destination::Inet { ip: "::1", port: 22 }));
        r.object = Some("@guard".into());
        assert_eq!(Destination::of(&r), Some(Destination::Unix("@guard")));
        r.object = Some("not an address".into());
        assert_eq!(Destination::of(&r), None);
        r.hook = Some(Hook::FileOpen);
        r.object = Some("10.0.0.1:443".into());
        assert_eq!(Destination::of(&r), None);
    }

    #[test]
    fn format_names_parse_and_unknown_ones_are_named() {
        assert_eq!(Format::parse("ocsf"), Ok(Format::Ocsf(OcsfVersion::CURRENT)));
        assert_eq!(Format::parse("ocsf-1.5"), Ok(Format::Ocsf(OcsfVersion::V1_5)));
        assert_eq!(Format::parse("cef"), Ok(Format::Cef));
        let e = Format::parse("ocsf-0.9").unwrap_err().to_string();
        assert!(e.contains("\"ocsf-0.9\""), "{e}");
    }

    #[test]
    fn command_lines_quote_what_needs_it() {
        let argv = ["rm".to_string(), "a b".into(), "it's".into(), "-rf".into(), String::new()];
        assert_eq!(command_line(&argv), r#"rm 'a b' 'it'\''s' -rf ''"#);
    }
}
