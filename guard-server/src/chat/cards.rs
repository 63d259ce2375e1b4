//! The cards: Slack Block Kit and a Teams Adaptive Card 1.5, the same facts in both. Every
//! string from the watched tree (argv, exe, paths, cwd, the agent's stated reason, user names)
//! is hostile: it is escaped for the card's markup (Slack mrkdwn: `&<>` as entities, so no
//! `<!here>` mention and no `<https://evil|click>` link; backticks so a code span cannot be
//! closed; Teams markdown: its punctuation backslash-escaped), control characters are made
//! visible (`guard_api::screen::escape`, as on a terminal), and long text is cut to the
//! services' limits, saying how much was cut.
use guard_api::screen::escape;
use guard_api::Timestamp;
use guard_proto::v1::{Operation, Process, Request, State};
use serde_json::{json, Value};

/// Slack: a section's text may be 3000 characters; room is left for the label.
const SLACK_TEXT: usize = 2800;
/// Slack: at most 50 blocks a message; the ancestry gets what the other blocks leave.
const SLACK_MAX_LEVELS: usize = 30;
/// Teams: no hard limit per TextBlock, but a card is at most 28 KB all told.
const TEAMS_TEXT: usize = 2000;
const TEAMS_MAX_LEVELS: usize = 10;

pub const APPROVE: &str = "guard_approve";
pub const DENY: &str = "guard_deny";

/// The facts of a request as the cards show them, raw (escaped by each renderer).
struct Facts<'a> {
    request: &'a Request,
    op: &'a Operation,
}

impl<'a> Facts<'a> {
    fn of(request: &'a Request) -> Self {
        static EMPTY: std::sync::OnceLock<Operation> = std::sync::OnceLock::new();
        let op = request.operation.as_ref().unwrap_or_else(|| EMPTY.get_or_init(Operation::default));
        Facts { request, op }
    }

    fn state(&self) -> State {
        State::try_from(self.request.state).unwrap_or(State::Unspecified)
    }

    /// (label, raw value) pairs, in reading order; empty values are left out.
    fn fields(&self) -> Vec<(&'static str, String)> {
        let r = self.request;
        let op = self.op;
        let got = r.reviews.iter().filter(|v| v.approve).count();
        let need = r.approvals_required.max(1);
        let mut out = vec![
            ("Host", r.host.clone()),
            ("Operation", format!("{} {}", op.hook, op.access).trim().to_string()),
            ("Object", op.object.clone()),
            ("User", format!("{} (uid {})", op.user, op.uid)),
            ("Tree owner", format!("{} (uid {}, from {})", op.owner, op.owner_uid, op.owner_source)),
            ("Working directory", op.cwd.clone()),
            ("Rule / policy", format!("{} / {}", op.rule, op.policy)),
            ("Approvals", format!("{got} of {need}")),
        ];
        if self.state() == State::Pending {
            out.push(("Expires", Timestamp::from_unix_ms(r.expires_ms).to_string()));
        }
        if !r.flags.is_empty() {
            out.push(("Server flags", r.flags.join(", ")));
        }
        out.push(("Request", r.id.clone()));
        out.retain(|(_, v)| !v.is_empty());
        out
    }

    fn stated_reason(&self) -> Option<&str> {
        self.op.stated_reason.as_ref().map(|s| s.reason.as_str()).filter(|s| !s.is_empty())
    }

    fn headline(&self) -> String {
        match self.state() {
            State::Pending => "guard: approval needed".into(),
            s => {
                let by = if self.request.decided_by.is_empty() {
                    String::new()
                } else {
                    format!(" by {}", self.request.decided_by)
                };
                format!("guard: {}{by}", s.label())
            }
        }
    }
}

/// What marks a process's argv: cut by the agent, redacted by the server, read from /proc.
fn argv_marks(p: &Process) -> String {
    let mut marks = Vec::new();
    if p.argv_truncated {
        marks.push("argv cut short by the agent");
    }
    if p.argv_redacted {
        marks.push("redacted by the server");
    }
    if p.argv_from_proc {
        marks.push("argv from /proc: the process can rewrite it, unverified");
    }
    marks.join("; ")
}

/// One argument as a shell would need it quoted, control characters made visible.
fn shell_word(a: &str) -> String {
    let a = escape(a);
    let plain = !a.is_empty() && a.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if plain {
        a.into_owned()
    } else {
        format!("'{}'", a.replace('\'', r"'\''"))
    }
}

fn argv_line(p: &Process) -> String {
    p.argv.iter().map(|a| shell_word(a)).collect::<Vec<_>>().join(" ")
}

/// `text` escaped by `one` char by char, cut so the result stays within `limit` characters
/// (never inside an escape), with a note of how much was left out.
fn cut_escaped(text: &str, limit: usize, one: fn(char, &mut String)) -> String {
    let total = text.chars().count();
    let mut out = String::new();
    let mut len = 0;
    let mut shown = 0;
    let mut piece = String::new();
    for c in text.chars() {
        piece.clear();
        one(c, &mut piece);
        let n = piece.chars().count();
        if len + n > limit {
            break;
        }
        out.push_str(&piece);
        len += n;
        shown += 1;
    }
    if shown < total {
        out.push_str(&format!(" … (cut: {shown} of {total} characters shown)"));
    }
    out
}

/// Slack mrkdwn: `&`, `<`, `>` as Slack's entities (all Slack parses links and mentions from),
/// the backtick as a look-alike (it would close a code span), control characters visible.
fn slack_char(c: char, out: &mut String) {
    match c {
        '&' => out.push_str("&amp;"),
        '<' => out.push_str("&lt;"),
        '>' => out.push_str("&gt;"),
        '`' => out.push('\u{2035}'),
        c => out.push_str(&escape(c.encode_utf8(&mut [0; 4]))),
    }
}

pub fn slack_escape(text: &str, limit: usize) -> String {
    cut_escaped(text, limit, slack_char)
}

/// Teams markdown: its punctuation backslash-escaped, `<>&` as look-alikes (TextBlocks do not
/// take entities), control characters visible.
fn teams_char(c: char, out: &mut String) {
    match c {
        '<' => out.push('\u{2039}'),
        '>' => out.push('\u{203a}'),
        '&' => out.push('\u{ff06}'),
        '\\' | '`' | '*' | '_' | '[' | ']' | '(' | ')' | '#' | '+' | '-' | '.' | '!' | '~' | '|' | '{' | '}' => {
            out.push('\\');
            out.push(c);
        }
        c => out.push_str(&escape(c.encode_utf8(&mut [0; 4]))),
    }
}

pub fn teams_escape(text: &str, limit: usize) -> String {
    cut_escaped(text, limit, teams_char)
}

/// The short plain line for notifications (Slack's `text`, Teams' summary).
fn summary(f: &Facts, escape_fn: fn(&str, usize) -> String) -> String {
    escape_fn(&format!("{} on {}: {} {}", f.headline(), f.request.host, f.op.hook, f.op.object), 280)
}

/// Slack `chat.postMessage` / `chat.update` content: `text` and `blocks`. `token`: the
/// buttons' value (None: a decided card, without buttons). `console`: the request's page.
pub fn slack(request: &Request, token: Option<&str>, console: Option<&str>) -> (String, Vec<Value>) {
    let f = Facts::of(request);
    let mut blocks =
        vec![json!({"type": "header", "text": {"type": "plain_text", "text": cut_plain(&f.headline(), 150)}})];
    let fields: Vec<String> = f.fields().iter().map(|(k, v)| format!("*{k}:* {}", slack_escape(v, 1900))).collect();
    // A section holds at most 10 fields.
    for chunk in fields.chunks(10) {
        let list: Vec<Value> = chunk.iter().map(|t| json!({"type": "mrkdwn", "text": t})).collect();
        blocks.push(json!({"type": "section", "fields": list}));
    }
    blocks.push(
        json!({"type": "section", "text": {"type": "mrkdwn", "text": "*Process ancestry* (acting process first)"}}),
    );
    for (i, p) in f.op.ancestry.iter().take(SLACK_MAX_LEVELS).enumerate() {
        let mut text = format!(
            "{i}. pid {} uid {} `{}`\nargv: `{}`",
            p.pid,
            p.uid,
            slack_escape(&p.exe, 500),
            slack_escape(&argv_line(p), SLACK_TEXT - 600)
        );
        let marks = argv_marks(p);
        if !marks.is_empty() {
            text.push_str(&format!("\n_{marks}_"));
        }
        blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": text}}));
    }
    if f.op.ancestry.len() > SLACK_MAX_LEVELS {
        let more = f.op.ancestry.len() - SLACK_MAX_LEVELS;
        blocks.push(json!({"type": "context", "elements": [{"type": "mrkdwn", "text": format!("… {more} more ancestors not shown")}]}));
    }
    if let Some(reason) = f.stated_reason() {
        let text = format!("*The agent's claim (unverified):* {}", slack_escape(reason, SLACK_TEXT));
        blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": text}}));
    }
    match (f.state(), token) {
        (State::Pending, Some(token)) => {
            let mut elements = vec![
                json!({"type": "button", "action_id": APPROVE, "style": "primary", "value": token,
                       "text": {"type": "plain_text", "text": "Approve"}}),
                json!({"type": "button", "action_id": DENY, "style": "danger", "value": token,
                       "text": {"type": "plain_text", "text": "Deny"}}),
            ];
            if let Some(url) = console {
                elements.push(json!({"type": "button", "action_id": "guard_console", "url": url,
                                     "text": {"type": "plain_text", "text": "Open in the console"}}));
            }
            blocks.push(json!({"type": "actions", "block_id": "guard_actions", "elements": elements}));
        }
        _ => {
            let mut text = format!("*{}*", slack_escape(&f.headline(), 300));
            if !request.reason.is_empty() {
                text.push_str(&format!(" ({})", slack_escape(&request.reason, 300)));
            }
            if !request.comment.is_empty() {
                text.push_str(&format!(": {}", slack_escape(&request.comment, 1000)));
            }
            blocks.push(json!({"type": "context", "elements": [{"type": "mrkdwn", "text": text}]}));
        }
    }
    (summary(&f, slack_escape), blocks)
}

/// Slack's plain_text: nothing is parsed, only the length matters.
fn cut_plain(text: &str, limit: usize) -> String {
    let text = escape(text);
    if text.chars().count() <= limit {
        text.into_owned()
    } else {
        let mut s: String = text.chars().take(limit - 1).collect();
        s.push('…');
        s
    }
}

/// The Teams Adaptive Card 1.5 with the same facts; Action.Execute buttons (verb
/// approve/deny) carrying the token, or none on a decided card.
pub fn teams(request: &Request, token: Option<&str>, console: Option<&str>) -> Value {
    let f = Facts::of(request);
    let facts: Vec<Value> =
        f.fields().iter().map(|(k, v)| json!({"title": k, "value": teams_escape(v, 1000)})).collect();
    let mut body = vec![
        json!({"type": "TextBlock", "text": teams_escape(&f.headline(), 200), "weight": "Bolder", "size": "Medium", "wrap": true}),
        json!({"type": "FactSet", "facts": facts}),
        json!({"type": "TextBlock", "text": "**Process ancestry** (acting process first)", "wrap": true}),
    ];
    for (i, p) in f.op.ancestry.iter().take(TEAMS_MAX_LEVELS).enumerate() {
        let mut text = format!(
            "{i}\\. pid {} uid {} {}  \nargv: {}",
            p.pid,
            p.uid,
            teams_escape(&p.exe, 300),
            teams_escape(&argv_line(p), TEAMS_TEXT)
        );
        let marks = argv_marks(p);
        if !marks.is_empty() {
            text.push_str(&format!("  \n_{}_", teams_escape(&marks, 300)));
        }
        body.push(json!({"type": "TextBlock", "text": text, "wrap": true, "fontType": "Monospace"}));
    }
    if f.op.ancestry.len() > TEAMS_MAX_LEVELS {
        let more = f.op.ancestry.len() - TEAMS_MAX_LEVELS;
        body.push(json!({"type": "TextBlock", "text": format!("… {more} more ancestors not shown"), "wrap": true}));
    }
    if let Some(reason) = f.stated_reason() {
        body.push(json!({"type": "TextBlock", "wrap": true,
                         "text": format!("**The agent's claim (unverified):** {}", teams_escape(reason, TEAMS_TEXT))}));
    }
    let mut actions = Vec::new();
    if let (State::Pending, Some(token)) = (f.state(), token) {
        actions.push(json!({"type": "Action.Execute", "title": "Approve", "verb": "approve", "style": "positive",
                            "data": {"token": token}}));
        actions.push(json!({"type": "Action.Execute", "title": "Deny", "verb": "deny", "style": "destructive",
                            "data": {"token": token}}));
    } else {
        let mut text = format!("**{}**", teams_escape(&f.headline(), 300));
        if !request.reason.is_empty() {
            text.push_str(&format!(" \\({}\\)", teams_escape(&request.reason, 300)));
        }
        if !request.comment.is_empty() {
            text.push_str(&format!(": {}", teams_escape(&request.comment, 1000)));
        }
        body.push(json!({"type": "TextBlock", "text": text, "wrap": true}));
    }
    if let Some(url) = console {
        actions.push(json!({"type": "Action.OpenUrl", "title": "Open in the console", "url": url}));
    }
    json!({
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.5",
        "fallbackText": summary(&f, teams_escape),
        "body": body,
        "actions": actions,
    })
}

/// The message an incoming webhook / Workflows URL takes: the card as an attachment.
pub fn teams_message(card: Value) -> Value {
    json!({
        "type": "message",
        "attachments": [{"contentType": "application/vnd.microsoft.card.adaptive", "contentUrl": null, "content": card}],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slack_escaping_defuses_mentions_links_and_code_spans() {
        let s = slack_escape("<!here> <https://evil|click> a&b `x` \x1b[2J", 1000);
        assert!(!s.contains('<') && !s.contains('>') && !s.contains('`') && !s.contains('\x1b'), "{s}");
        assert!(s.contains("&lt;!here&gt;") && s.contains("a&amp;b"), "{s}");
    }

    #[test]
    fn cutting_never_splits_an_entity_and_says_how_much() {
        let s = slack_escape(&"<".repeat(100), 22);
        assert!(s.starts_with("&lt;&lt;&lt;&lt;&lt; …"), "{s}");
        assert!(s.contains("5 of 100"), "{s}");
    }

    #[test]
    fn teams_escaping_defuses_links_and_html() {
        let s = teams_escape("[click](https://evil) <script>", 1000);
        assert!(!s.contains("<script>") && !s.contains("[click]("), "{s}");
    }
}
