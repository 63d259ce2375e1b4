//! guard's audit record as one ArcSight Common Event Format (CEF) line:
//! `CEF:0|guard|guard|<version>|<signature>|<name>|<severity>|<extension>`.
//!
//! Escaping follows the CEF specification: in the header `\` and `|` are escaped with a
//! backslash; in the extension `\` and `=` are, and newlines are written as `\n` and `\r`.
//! The specification says nothing of other control characters; everything a watched tree
//! controls (argv, paths, stated reasons) may carry them, so every other C0/C1 control, DEL, the
//! bidi marks and the line separators are written as `\xNN` / `\u{NNNN}` (the backslash itself is
//! always escaped, so such a sequence cannot be forged), and a header field gets the same
//! treatment for newlines: one record is always one line.
//!
//! Extension keys are ArcSight's standard ones (`rt`, `dvchost`, `act`, `outcome`, `reason`,
//! `cat`, `spid`, `sproc`, `suid`, `suser`, `filePath`, `dst`, `dpt`, `msg`) plus labelled
//! custom strings: `cs1` rule, `cs2` policy, `cs3` tree id, `cs4` request id, `cs5` command
//! line, `cs6` the stated reason; custom numbers: `cn1` held ms, `cn2` grant seconds, `cn3`
//! events lost.

use super::{base_name, command_line, event_name, is_file, kind_name, Destination, Outcome, Severity};
use crate::record::AuditRecord;
use std::fmt::Write;

/// `r` as one CEF line (no newline).
pub fn encode(r: &AuditRecord) -> String {
    let outcome = Outcome::of(r);
    let signature = event_name(r);
    let signature = signature.as_str();
    let name = match &r.object {
        Some(o) => format!("{} {signature} {o}", outcome.name()),
        None => format!("{} {signature}", outcome.name()),
    };
    let severity = match Severity::of(r) {
        Severity::Informational => 1,
        Severity::Low => 3,
        Severity::Medium => 5,
        Severity::High => 8,
    };
    let mut line = String::from("CEF:0|guard|guard|");
    line.push_str(&header(env!("CARGO_PKG_VERSION")));
    for field in [signature, &name, &severity.to_string()] {
        line.push('|');
        line.push_str(&header(field));
    }
    line.push('|');

    let mut ext: Vec<(&str, String)> = vec![("rt", r.time.unix_ms().to_string()), ("dvchost", r.host.clone())];
    let act = match (outcome, outcome.went_ahead()) {
        // Nothing was allowed or denied: the device noted it (or refused an attempt).
        (Outcome::Noted, _) if r.reason == Some(crate::record::Reason::Refused) => "refuse",
        (Outcome::Noted, _) => "log",
        (_, Some(true)) => "allow",
        (_, Some(false)) => "deny",
        (_, None) => "hold",
    };
    ext.push(("act", act.into()));
    ext.push(("outcome", outcome.name().into()));
    opt(&mut ext, "reason", r.reason.map(|x| x.name().to_string()));
    ext.push(("cat", kind_name(r.kind).into()));
    opt(&mut ext, "spid", r.pid.map(|p| p.to_string()));
    opt(&mut ext, "sproc", r.exe.as_deref().map(|e| base_name(e).to_string()));
    opt(&mut ext, "suid", r.uid.map(|u| u.to_string()));
    opt(&mut ext, "suser", r.user.clone());
    if let (Some(h), Some(o)) = (r.hook, &r.object) {
        if is_file(h) {
            ext.push(("filePath", o.clone()));
            ext.push(("fname", base_name(o).to_string()));
        }
    }
    match Destination::of(r) {
        Some(Destination::Inet { ip, port }) => {
            ext.push(("dst", ip.to_string()));
            ext.push(("dpt", port.to_string()));
        }
        Some(Destination::Unix(path)) => ext.push(("destinationServiceName", path.to_string())),
        None => {}
    }
    for (n, label, value) in [
        (1, "rule", r.rule.clone()),
        (2, "policy", r.policy.clone()),
        (3, "treeId", r.tree_id.clone()),
        (4, "requestId", r.request_id.clone()),
        (5, "commandLine", (!r.argv.is_empty()).then(|| command_line(&r.argv))),
        (6, "statedReason", r.stated_reason.as_ref().map(|s| s.reason.clone())),
    ] {
        if let Some(v) = value {
            ext.push((CS[n - 1].0, v));
            ext.push((CS[n - 1].1, label.into()));
        }
    }
    for (n, label, value) in [(1, "heldMs", r.held_ms), (2, "grantSeconds", r.grant_seconds), (3, "eventsLost", r.lost)]
    {
        if let Some(v) = value {
            ext.push((CN[n - 1].0, v.to_string()));
            ext.push((CN[n - 1].1, label.into()));
        }
    }
    // A checkpoint's signed head has no CEF key: it is the message (OCSF and ECS carry it whole).
    let head = r.checkpoint.as_ref().map(|c| format!("{} seq {} hash {} key {}", c.chain, c.seq, c.hash, c.key_id));
    opt(&mut ext, "msg", r.comment.clone().or(head));
    for (i, (k, v)) in ext.iter().enumerate() {
        if i > 0 {
            line.push(' ');
        }
        let _ = write!(line, "{k}={}", extension(v));
    }
    line
}

const CS: [(&str, &str); 6] = [
    ("cs1", "cs1Label"),
    ("cs2", "cs2Label"),
    ("cs3", "cs3Label"),
    ("cs4", "cs4Label"),
    ("cs5", "cs5Label"),
    ("cs6", "cs6Label"),
];
const CN: [(&str, &str); 3] = [("cn1", "cn1Label"), ("cn2", "cn2Label"), ("cn3", "cn3Label")];

fn opt(ext: &mut Vec<(&'static str, String)>, k: &'static str, v: Option<String>) {
    if let Some(v) = v {
        ext.push((k, v));
    }
}

/// A header field: `\` and `|` escaped, controls made visible.
pub fn header(text: &str) -> String {
    escape(text, &['|'])
}

/// An extension value: `\` and `=` escaped, newlines as `\n` / `\r`, controls made visible.
pub fn extension(text: &str) -> String {
    escape(text, &['='])
}

fn escape(text: &str, special: &[char]) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            c if special.contains(&c) => {
                out.push('\\');
                out.push(c);
            }
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            // Everything else a terminal or a line-based reader could be fooled by.
            '\u{0}'..='\u{1f}' | '\u{7f}'..='\u{9f}' => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            '\u{200e}'
            | '\u{200f}'
            | '\u{061c}'
            | '\u{202a}'..='\u{202e}'
            | '\u{2066}'..='\u{2069}'
            | '\u{2028}'
            | '\u{2029}' => {
                let _ = write!(out, "\\u{{{:04x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}
