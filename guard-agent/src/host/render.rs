//! The CLI's screens for `pending` and a daemon's `status` (the JSON the admin socket answers,
//! as text). Every string is printed through `guard_api::screen::escape`: objects, argv, exe
//! and cwd come from the watched tree and must not drive the terminal.
use guard_api::screen::{escape, escape_argv};

/// A value as text: strings without their quotes, escaped for the terminal.
fn text(v: &serde_json::Value) -> String {
    v.as_str().map(|s| escape(s).into_owned()).unwrap_or_else(|| escape(&v.to_string()).into_owned())
}

/// argv as the approver reads it: arguments escaped and delimited, marked when it was read
/// from /proc (the process can rewrite that at will).
fn argv_text(argv: &serde_json::Value, from_proc: bool) -> String {
    let args: Vec<String> =
        argv.as_array().into_iter().flatten().map(|a| a.as_str().map(String::from).unwrap_or_default()).collect();
    let mark = if from_proc { "  [argv from /proc, unverified]" } else { "" };
    format!("{}{mark}", escape_argv(&args))
}

/// `guard-agent pending`: one block per waiting hold.
pub fn print_pending(data: &serde_json::Value) {
    print!("{}", pending_text(data));
}

fn pending_text(data: &serde_json::Value) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let Some(list) = data.as_array() else { return out };
    if list.is_empty() {
        out.push_str("no holds waiting\n");
        return out;
    }
    // Writing to a String cannot fail.
    let _ = writeln!(out, "{:<6} {:<20} {:<8} {:<24} {:<6} OBJECT", "ID", "HOOK", "PID", "RULE", "HELD");
    for h in list {
        let s = |k: &str| h.get(k).map(text).unwrap_or_default();
        let _ = writeln!(
            out,
            "{:<6} {:<20} {:<8} {:<24} {:<6} {}",
            s("id"),
            s("hook"),
            s("pid"),
            s("rule"),
            format!("{}s", s("held_secs")),
            s("object")
        );
        let from_proc = h.get("argv_from_proc").and_then(|v| v.as_bool()).unwrap_or(false);
        let _ = writeln!(out, "       by {} {}", s("exe"), argv_text(&h["argv"], from_proc));
        let owner = &h["owner"];
        let _ = writeln!(
            out,
            "       cwd {}  tree {} owned by {} (uid {}, {})",
            s("cwd"),
            s("tree_id"),
            text(&owner["name"]),
            text(&owner["uid"]),
            text(&owner["source"])
        );
    }
    out
}

/// `guard-agent status` for a daemon: one screen.
pub fn print_status(v: &serde_json::Value) {
    let s = text;
    let k = &v["kernel"];
    println!(
        "kernel {}: {} (lsm {}, btf {}); programs {}; pins {}",
        s(&k["release"]),
        if k["enforcing"] == true { "enforcing" } else { "NOT ENFORCING" },
        s(&k["lsm"]),
        k["btf"],
        s(&k["programs"]),
        s(&k["pins"])
    );
    println!("config {}; last reload: {}", s(&v["config"]), v["last_reload"]);
    if !v["server"].is_null() {
        println!("server {}", v["server"]);
    }
    for p in v["policies"].as_array().into_iter().flatten() {
        println!(
            "policy {:<3} {:<20} {} rules, default {} ({})",
            s(&p["id"]),
            s(&p["name"]),
            p["rules"],
            s(&p["default"]),
            s(&p["file"])
        );
    }
    for sel in v["selectors"].as_array().into_iter().flatten() {
        println!("rank {:<3} {} -> {} [{}]", sel["rank"], s(&sel["selector"]), s(&sel["policy"]), s(&sel["state"]));
    }
    println!(
        "{} trees, {} tasks, {} holds waiting, {} events lost, {} records written",
        v["trees"].as_array().map(|t| t.len()).unwrap_or(0),
        v["watched_tasks"],
        v["holds_waiting"],
        v["events_lost"],
        v["records_written"]
    );
    println!("{:<8} {:<16} {:<6} {:<6} {:<6} {:<28} SELECTOR", "ROOT", "POLICY", "PROCS", "TASKS", "HOLDS", "EXE");
    for t in v["trees"].as_array().into_iter().flatten() {
        println!(
            "{:<8} {:<16} {:<6} {:<6} {:<6} {:<28} {}",
            t["root"],
            s(&t["policy"]),
            t["processes"],
            t["tasks"],
            t["holds"],
            s(&t["exe"]),
            s(&t["selector"])
        );
        if let Some(r) = t["stated_reason"].as_object() {
            println!("         reason: {}", serde_json::Value::Object(r.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_shows_hostile_text_escaped_and_proc_argv_marked() {
        let hold = serde_json::json!([{
            "id": "1", "hook": "file_open", "pid": 42, "rule": "ask", "held_secs": 3,
            "object": "/home/u/.ssh/authorized_keys\u{1b}[2K\r/home/u/README.md",
            "exe": "/usr/bin/tee\u{202e}txt.sh",
            "argv": ["tee", "\u{1b}[6A\r\u{1b}[2Kobject:    /home/u/README.md\u{1b}[6B", "\u{1b}]52;c;ZXZpbA==\u{7}"],
            "argv_from_proc": true,
            "cwd": "/tmp\nrule:       harmless",
            "tree_id": "10-1",
            "owner": {"uid": 1000, "name": "alice", "source": "loginuid"},
        }]);
        let screen = pending_text(&hold);
        for bad in ['\u{1b}', '\r', '\u{7}', '\u{202e}'] {
            assert!(!screen.contains(bad), "{bad:?} reached the screen: {screen}");
        }
        // Four lines: the header and three per hold; no forged line from the cwd.
        assert_eq!(screen.lines().count(), 4, "{screen}");
        assert!(screen.contains("\\x1b[6A\\r\\x1b[2Kobject:"), "{screen}");
        assert!(screen.contains("/usr/bin/tee\\u{202e}txt.sh"), "{screen}");
        assert!(screen.contains("[argv from /proc, unverified]"), "{screen}");
        assert!(screen.contains("owned by alice (uid 1000, loginuid)"), "{screen}");
    }
}
