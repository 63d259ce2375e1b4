//! The CLI's screens for `pending` and a daemon's `status` (the JSON the admin socket answers,
//! as text).

/// A value as text: strings without their quotes.
fn text(v: &serde_json::Value) -> String {
    v.as_str().map(String::from).unwrap_or_else(|| v.to_string())
}

/// `guard-agent pending`: one block per waiting hold.
pub fn print_pending(data: &serde_json::Value) {
    let Some(list) = data.as_array() else { return };
    if list.is_empty() {
        println!("no holds waiting");
        return;
    }
    println!("{:<6} {:<20} {:<8} {:<24} {:<6} OBJECT", "ID", "HOOK", "PID", "RULE", "HELD");
    for h in list {
        let s = |k: &str| h.get(k).map(text).unwrap_or_default();
        println!(
            "{:<6} {:<20} {:<8} {:<24} {:<6} {}",
            s("id"),
            s("hook"),
            s("pid"),
            s("rule"),
            format!("{}s", s("held_secs")),
            s("object")
        );
        println!("       by {} {}", s("exe"), h.get("argv").map(|a| a.to_string()).unwrap_or_default());
    }
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
