//! CEF and ECS output, and `Format::encode_line`, with what a hostile tree puts in its argv and
//! paths: pipes, equals signs, backslashes, newlines, terminal escapes, bidi marks.

use guard_api::export::{cef, ecs, Format, OcsfVersion};
use guard_api::{Action, AuditRecord, Decision, Hook, Reason, RecordKind, StatedReason, Timestamp};
use serde_json::json;
use std::collections::BTreeMap;

const HOSTILE_PATH: &str = "/tmp/a=b|c\\d\ne\rf";

fn hostile() -> AuditRecord {
    let mut r = AuditRecord::at(Timestamp::from_unix_ms(1_796_002_226_007), RecordKind::Enforcement, "web1");
    r.decision = Some(Decision::Deny);
    r.reason = Some(Reason::Rule);
    r.action = Some(Action::Deny);
    r.rule = Some("no=secrets|ever".into());
    r.policy = Some("claude-code".into());
    r.hook = Some(Hook::FileOpen);
    r.object = Some(HOSTILE_PATH.into());
    r.pid = Some(42);
    r.uid = Some(1000);
    r.user = Some("dev".into());
    r.exe = Some("/usr/bin/cat".into());
    r.argv = vec![
        "cat".into(),
        "x msg=forged act=allow".into(),
        "a|b\nCEF:0|forged|guard|1|x|y|1|act=allow".into(),
        "\x1b[2K\x07".into(),
        "\u{202e}txt.exe".into(),
    ];
    r.comment = Some("line one\nline two = \\ done".into());
    r.stated_reason = Some(StatedReason { tool: "Bash".into(), reason: "because|=\\\n".into(), ..Default::default() });
    r
}

/// A CEF header split at its unescaped pipes, each field unescaped.
fn cef_header(line: &str) -> (Vec<String>, &str) {
    let mut fields = Vec::new();
    let mut cur = String::new();
    let mut chars = line.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some((_, 'n')) => cur.push('\n'),
                Some((_, 'r')) => cur.push('\r'),
                Some((_, e)) if e == '\\' || e == '|' => cur.push(e),
                Some((_, e)) => {
                    cur.push('\\');
                    cur.push(e);
                }
                None => panic!("a trailing backslash in {line:?}"),
            },
            '|' => {
                fields.push(std::mem::take(&mut cur));
                if fields.len() == 7 {
                    return (fields, &line[i + 1..]);
                }
            }
            c => cur.push(c),
        }
    }
    panic!("fewer than 8 header fields in {line:?}")
}

/// A CEF extension as a key -> values map (a key written twice shows up twice): each unescaped
/// `=` ends a key (the word before it), the value runs to the space before the next key.
fn cef_extension(ext: &str) -> BTreeMap<String, Vec<String>> {
    let mut pairs: Vec<(String, String)> = Vec::new();
    let mut cur = String::new();
    let mut chars = ext.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some('n') => cur.push('\n'),
                Some('r') => cur.push('\r'),
                Some(e) if e == '\\' || e == '=' => cur.push(e),
                Some(e) => {
                    cur.push('\\');
                    cur.push(e);
                }
                None => panic!("a trailing backslash in {ext:?}"),
            },
            '=' => {
                // The key is the last word of what came before.
                let (value, key) = match cur.rsplit_once(' ') {
                    Some((v, k)) => (v.to_string(), k.to_string()),
                    None => (String::new(), cur.clone()),
                };
                if let Some(last) = pairs.last_mut() {
                    last.1 = value;
                }
                assert!(key.chars().all(|c| c.is_ascii_alphanumeric()), "key {key:?} in {ext:?}");
                pairs.push((key, String::new()));
                cur.clear();
            }
            c => cur.push(c),
        }
    }
    if let Some(last) = pairs.last_mut() {
        last.1 = cur;
    }
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in pairs {
        map.entry(k).or_default().push(v);
    }
    map
}

#[test]
fn cef_escapes_what_a_hostile_tree_writes_so_nothing_is_forged() {
    let r = hostile();
    let line = cef::encode(&r);
    for bad in ['\n', '\r', '\x1b', '\x07', '\u{202e}'] {
        assert!(!line.contains(bad), "{bad:?} reached the line: {line}");
    }
    let (header, ext) = cef_header(&line);
    assert_eq!(header[0], "CEF:0");
    assert_eq!(header[1..3], ["guard", "guard"]);
    assert_eq!(header[4], "file_open");
    assert_eq!(header[5], format!("blocked file_open {HOSTILE_PATH}"), "the pipe and newline stay in the name");
    assert_eq!(header[6], "5");
    let ext = cef_extension(ext);
    let one = |k: &str| -> &str {
        let v = ext.get(k).unwrap_or_else(|| panic!("no {k} in {ext:?}"));
        assert_eq!(v.len(), 1, "{k} written {} times: {ext:?}", v.len());
        &v[0]
    };
    assert_eq!(one("act"), "deny", "argv's act=allow did not become a key");
    assert_eq!(one("msg"), "line one\nline two = \\ done", "argv's msg=forged did not become a key");
    assert_eq!(one("filePath"), HOSTILE_PATH);
    assert_eq!(one("cs1"), "no=secrets|ever");
    assert_eq!(one("cs1Label"), "rule");
    assert_eq!(one("cs6"), "because|=\\\n");
    assert_eq!(one("rt"), "1796002226007");
    assert_eq!(one("dvchost"), "web1");
    assert_eq!(one("spid"), "42");
    let cmd = one("cs5");
    assert!(cmd.starts_with("cat 'x msg=forged act=allow' 'a|b\nCEF:0|forged"), "{cmd:?}");
    assert!(cmd.contains("\\x1b[2K\\x07"), "the escape is shown, not kept: {cmd:?}");
    assert!(cmd.contains("\\u{202e}txt.exe"), "{cmd:?}");
    let keys: Vec<&str> = ext.keys().map(String::as_str).collect();
    assert!(!keys.contains(&"forged"), "{keys:?}");
}

#[test]
fn cef_header_and_extension_escaping_follow_the_specification() {
    assert_eq!(cef::header(r"a|b\c"), r"a\|b\\c");
    assert_eq!(cef::header("a=b"), "a=b", "= is not special in the header");
    assert_eq!(cef::header("a\nb"), r"a\nb");
    assert_eq!(cef::extension(r"a=b\c"), r"a\=b\\c");
    assert_eq!(cef::extension("a|b"), "a|b", "| is not special in the extension");
    assert_eq!(cef::extension("a\r\nb"), r"a\r\nb");
    assert_eq!(cef::extension("\x1b\x00\u{85}"), r"\x1b\x00\x85");
    assert_eq!(cef::extension(r"\x1b"), r"\\x1b", "a literal \\x1b cannot pass for an escaped ESC");
}

#[test]
fn cef_severity_and_outcome_follow_the_record() {
    let mut r = hostile();
    r.reason = Some(Reason::Tamper);
    let line = cef::encode(&r);
    let (h, ext) = cef_header(&line);
    assert_eq!(h[6], "8");
    assert_eq!(cef_extension(ext)["reason"], ["tamper"]);
    r.decision = Some(Decision::Allow);
    r.reason = Some(Reason::Approved);
    r.approver = Some("alice".into());
    let line = cef::encode(&r);
    let (h, ext) = cef_header(&line);
    assert_eq!(h[6], "1");
    assert_eq!(cef_extension(ext)["outcome"], ["approved"]);
    let mut net = hostile();
    net.hook = Some(Hook::SocketConnect);
    net.object = Some("[2001:db8::1]:443".into());
    let line = cef::encode(&net);
    let ext = cef_extension(cef_header(&line).1);
    assert_eq!(ext["dst"], ["2001:db8::1"]);
    assert_eq!(ext["dpt"], ["443"]);
    assert!(!ext.contains_key("filePath"));
}

const ECS_CATEGORIES: [&str; 20] = [
    "api",
    "authentication",
    "configuration",
    "database",
    "driver",
    "email",
    "file",
    "host",
    "iam",
    "intrusion_detection",
    "library",
    "malware",
    "network",
    "package",
    "process",
    "registry",
    "session",
    "threat",
    "vulnerability",
    "web",
];
const ECS_TYPES: [&str; 17] = [
    "access",
    "admin",
    "allowed",
    "change",
    "connection",
    "creation",
    "deletion",
    "denied",
    "end",
    "error",
    "group",
    "indicator",
    "info",
    "installation",
    "protocol",
    "start",
    "user",
];

#[test]
fn ecs_documents_use_ecs_fields_and_only_its_allowed_values() {
    for h in Hook::ALL {
        for d in [Decision::Allow, Decision::Deny] {
            let mut r = hostile();
            r.hook = Some(h);
            r.decision = Some(d);
            let e = ecs::encode(&r);
            let cats = e["event"]["category"].as_array().unwrap();
            assert!(cats.iter().all(|c| ECS_CATEGORIES.contains(&c.as_str().unwrap())), "{h:?}: {cats:?}");
            let types = e["event"]["type"].as_array().unwrap();
            assert!(types.iter().all(|t| ECS_TYPES.contains(&t.as_str().unwrap())), "{h:?}: {types:?}");
            let (outcome, ty) = if d == Decision::Allow { ("success", "allowed") } else { ("failure", "denied") };
            assert_eq!(e["event"]["outcome"], outcome);
            assert!(types.iter().any(|t| t == ty), "{types:?}");
            assert_eq!(e["event"]["action"], h.name());
        }
    }
    let e = ecs::encode(&hostile());
    assert_eq!(e["@timestamp"], "2026-11-30T01:30:26.007Z");
    assert_eq!(e["event"]["kind"], "event");
    assert_eq!(e["event"]["category"], json!(["file"]));
    assert_eq!(e["event"]["type"], json!(["access", "denied"]));
    assert_eq!(e["host"]["name"], "web1");
    assert_eq!(e["file"]["path"], HOSTILE_PATH);
    assert_eq!(e["process"]["pid"], 42);
    assert_eq!(e["process"]["executable"], "/usr/bin/cat");
    assert_eq!(e["process"]["args"][2], "a|b\nCEF:0|forged|guard|1|x|y|1|act=allow");
    assert_eq!(e["user"], json!({"id": "1000", "name": "dev"}));
    assert_eq!(e["rule"], json!({"name": "no=secrets|ever", "ruleset": "claude-code"}));
    assert_eq!(e["guard"]["reason"], "rule");
    assert_eq!(e["guard"]["stated_reason"]["tool"], "Bash");

    let mut net = hostile();
    net.hook = Some(Hook::SocketConnect);
    net.object = Some("10.0.0.7:443".into());
    let e = ecs::encode(&net);
    assert_eq!(e["destination"]["ip"], "10.0.0.7");
    assert_eq!(e["destination"]["port"], 443);
    assert!(e.get("file").is_none());

    let mut review = hostile();
    review.kind = RecordKind::Request;
    review.decision = None;
    let e = ecs::encode(&review);
    assert_eq!(e["event"]["outcome"], "unknown");
    assert_eq!(e["event"]["category"], json!(["iam"]));
    assert_eq!(e["guard"]["outcome"], "pending");
}

#[test]
fn every_format_writes_one_line_per_record_whatever_the_record_holds() {
    let r = hostile();
    for f in [Format::Ocsf(OcsfVersion::V1_9), Format::Ocsf(OcsfVersion::V1_5), Format::Ecs, Format::Cef, Format::Jsonl]
    {
        let line = f.encode_line(&r);
        assert!(!line.contains('\n') && !line.contains('\r'), "{f:?}: {line}");
        if f != Format::Cef {
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            assert!(v.is_object(), "{f:?}");
        }
    }
    assert_eq!(AuditRecord::from_json(&Format::Jsonl.encode_line(&r)).unwrap(), r);
    let ocsf: serde_json::Value = serde_json::from_str(&Format::Ocsf(OcsfVersion::V1_9).encode_line(&r)).unwrap();
    assert_eq!(ocsf["file"]["path"], HOSTILE_PATH);
}

/// The records about guard itself (grant, policy, checkpoint, agent events, a refused attempt)
/// in ECS and CEF: ECS's allowed categories and types, the outcome of what was noted, and CEF's
/// action; each with what a hostile tree could put in its text.
#[test]
fn ecs_and_cef_name_grants_policies_checkpoints_and_agent_events() {
    let at = |kind| {
        let mut r = AuditRecord::at(Timestamp::from_unix_ms(1_796_002_226_007), kind, "web1");
        r.comment = Some("a=b|c\nd".into());
        r
    };
    let mut grant = at(RecordKind::Grant);
    grant.decision = Some(Decision::Allow);
    grant.reason = Some(Reason::Approved);
    grant.approver = Some("alice".into());
    let mut ended = at(RecordKind::Grant);
    ended.reason = Some(Reason::Exited);
    let mut policy = at(RecordKind::Policy);
    policy.object = Some("sha256:ab".into());
    let mut new_policy = policy.clone();
    new_policy.comment = None;
    let mut checkpoint = at(RecordKind::Checkpoint);
    checkpoint.comment = None;
    checkpoint.checkpoint = Some(guard_api::chain::SignedHead {
        chain: "server".into(),
        seq: 7,
        hash: "cd".into(),
        key_id: "k1".into(),
        signature: "ef".into(),
    });
    let agent = |object: &str| {
        let mut r = at(RecordKind::Agent);
        r.object = Some(object.into());
        r
    };
    let mut refused = at(RecordKind::Review);
    refused.reason = Some(Reason::Refused);
    refused.approver = Some("mallory".into());
    let cases = [
        (grant, "iam", "creation", "success", "allow", "grant"),
        (ended, "iam", "deletion", "success", "log", "grant"),
        (policy, "configuration", "change", "success", "log", "policy"),
        (new_policy, "configuration", "creation", "success", "log", "policy"),
        (checkpoint, "host", "info", "success", "log", "checkpoint"),
        (agent("start"), "process", "start", "success", "log", "agent.start"),
        (agent("stop"), "process", "end", "success", "log", "agent.stop"),
        (agent("spool_damaged"), "host", "error", "success", "log", "agent.spool_damaged"),
        (agent("backlog_full"), "host", "error", "success", "log", "agent.backlog_full"),
        (refused, "iam", "change", "failure", "refuse", "review"),
    ];
    for (r, category, ty, outcome, act, name) in cases {
        let e = ecs::encode(&r);
        assert_eq!(e["event"]["category"], json!([category]), "{name}");
        let types = e["event"]["type"].as_array().unwrap();
        assert_eq!(types[0], ty, "{name}");
        assert!(types.iter().all(|t| ECS_TYPES.contains(&t.as_str().unwrap())), "{name}: {types:?}");
        assert!(ECS_CATEGORIES.contains(&category));
        assert_eq!((e["event"]["outcome"].as_str(), e["event"]["action"].as_str()), (Some(outcome), Some(name)));
        let line = cef::encode(&r);
        assert!(!line.contains('\n'), "{line}");
        let (h, ext) = cef_header(&line);
        assert_eq!(h[4], name);
        assert_eq!(cef_extension(ext)["act"], [act], "{name}: {line}");
    }
    let mut checkpoint = at(RecordKind::Checkpoint);
    checkpoint.comment = None;
    checkpoint.checkpoint = Some(guard_api::chain::SignedHead {
        chain: "server".into(),
        seq: 7,
        hash: "cd".into(),
        key_id: "k1".into(),
        signature: "ef".into(),
    });
    assert_eq!(ecs::encode(&checkpoint)["guard"]["checkpoint"]["seq"], 7);
    let line = cef::encode(&checkpoint);
    assert_eq!(cef_extension(cef_header(&line).1)["msg"], ["server seq 7 hash cd key k1"]);
    let e = ecs::encode(&agent("spool_damaged"));
    assert_eq!(e["event"]["severity"], 4, "a damaged spool is an alarm");
}

#[test]
fn a_sealed_record_carries_its_chain_entry_in_ocsf() {
    use guard_api::export::ocsf::{encode, OcsfVersion};
    let mut r = guard_api::AuditRecord::new(guard_api::RecordKind::Enforcement, "web1");
    r.hook = Some(guard_api::Hook::FileOpen);
    r.object = Some("/etc/hosts".into());
    guard_api::chain::seal(&mut r, "s1", 7, "ab");
    let e = encode(&r, OcsfVersion::V1_9);
    assert_eq!(e["metadata"]["uid"], "web1/s1/7");
    let a = &e["attestation_list"][0];
    assert_eq!(a["chain_uid"], "web1/s1");
    assert_eq!(a["uid"], "7");
    assert_eq!(a["fingerprint"]["value"], r.chain.as_ref().unwrap().hash.as_str());
    assert_eq!(a["prev_event"]["uid"], "6");
    assert!(e["metadata"]["profiles"].as_array().unwrap().iter().any(|p| p == "record_integrity"));
    // 1.5 has no record_integrity profile: the entry is not written.
    assert!(encode(&r, OcsfVersion::V1_5).get("attestation_list").is_none());
}
