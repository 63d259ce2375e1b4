//! guardctl: answer guard's held operations from the command line (issue 3).
//!
//! Talks to guard-server's ReviewService and AuditService over mTLS with an approver
//! certificate. Exit codes: 0 done, 1 usage or connection failure, 2 refused by the server.

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use guard_api::chain::verify::{parse_rows, Keys};
use guard_api::{export::Format, AuditRecord};
use guard_proto::v1::audit_service_client::AuditServiceClient;
use guard_proto::v1::review_service_client::ReviewServiceClient;
use guard_proto::v1::AuditHeadRequest;
use guard_proto::v1::{
    AuditQuery, CancelRequestRequest, GetRequestRequest, ListRequestsRequest, Operation, Request, ReviewRequest, State,
    WatchPendingRequest, WhoAmIRequest,
};
use guardctl::chain;
use guardctl::conn::{self, TlsFiles, TlsMaterial};
use guardctl::failure::{self, EXIT_FAILURE};
use guardctl::render::{self, now_ms};
use guardctl::table::{keep_end, keep_start, Table};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use tonic::transport::Channel;

#[derive(Parser)]
#[command(name = "guardctl", version, about = "Review and answer guard's held operations")]
struct Cli {
    #[command(flatten)]
    conn: ConnArgs,
    /// Print JSON (one object per line) instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args)]
struct ConnArgs {
    /// guard-server's URL.
    #[arg(long, env = "GUARDCTL_SERVER", default_value = "https://127.0.0.1:7443", global = true)]
    server: String,
    /// CA certificate that signed the server's certificate (PEM).
    #[arg(long, env = "GUARDCTL_CA", global = true)]
    ca: Option<PathBuf>,
    /// This approver's certificate (PEM).
    #[arg(long, env = "GUARDCTL_CERT", global = true)]
    cert: Option<PathBuf>,
    /// This approver's private key (PEM).
    #[arg(long, env = "GUARDCTL_KEY", global = true)]
    key: Option<PathBuf>,
    /// Directory written by `guard-server init-pki`: uses DIR/ca.crt and DIR/approver-NAME.crt/.key
    /// (with --as NAME).
    #[arg(long, value_name = "DIR", global = true)]
    pki: Option<PathBuf>,
    /// Approver name within --pki.
    #[arg(long = "as", value_name = "NAME", global = true)]
    as_name: Option<String>,
}

// Parsed once per run: the size of the `audit` variant (its filters) costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Cmd {
    /// Pending requests, oldest first.
    Pending,
    /// Pending requests, then every change as it happens, until Ctrl-C.
    Watch,
    /// Everything about one request.
    Show { id: String },
    /// Approve a request (one approval; some requests need several).
    Approve {
        id: String,
        /// Also approve the same operation (host, tree, hook, object) without asking for this
        /// long, or until the tree exits: 10m, 1h.
        #[arg(long = "for", value_name = "DURATION", value_parser = humantime::parse_duration)]
        grant: Option<Duration>,
        #[arg(long)]
        comment: Option<String>,
    },
    /// Deny a request; the reason is shown to whoever asked.
    Deny {
        id: String,
        #[arg(long, required = true)]
        reason: String,
    },
    /// Cancel a pending request without deciding on the operation.
    Cancel {
        id: String,
        #[arg(long)]
        comment: Option<String>,
    },
    /// Requests in any state, newest first.
    List {
        #[arg(long, value_enum)]
        state: Vec<StateArg>,
        #[arg(long)]
        host: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// The server's audit trail.
    Audit {
        #[command(flatten)]
        query: AuditArgs,
        #[command(subcommand)]
        action: Option<AuditAction>,
    },
    /// Who the server takes this certificate for.
    Whoami,
    /// Make this approver's key and a certificate signing request, here: send the .csr to an
    /// admin (`guard-server cert sign --csr FILE`), keep the .key.
    Enroll {
        /// Your approver name (the certificate's CN).
        name: String,
        /// Where to write approver-NAME.key and approver-NAME.csr.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
}

/// Which events `guardctl audit` (and `audit search`, `audit export`) reads, and how it prints them.
#[derive(Args, Clone)]
struct AuditArgs {
    /// Only events from this time on: how long ago (10m, 2h, 1d) or an RFC 3339 time
    /// (2026-11-30T07:00:00Z).
    #[arg(long, value_name = "AGO|TIME", value_parser = parse_time_ms)]
    since: Option<i64>,
    /// Only events before this time, written as for --since.
    #[arg(long, value_name = "AGO|TIME", value_parser = parse_time_ms)]
    until: Option<i64>,
    #[arg(long = "request", value_name = "ID")]
    request: Option<String>,
    #[arg(long)]
    host: Option<String>,
    /// Only records of this decision: allow, deny, or pending (a request's record at its
    /// creation, before anyone decided).
    #[arg(long, value_enum)]
    decision: Option<DecisionArg>,
    /// Only records of this rule (its exact name).
    #[arg(long, value_name = "RULE")]
    rule: Option<String>,
    /// Only records whose approver is this name: who decided, reviewed, granted, or
    /// tried and was refused.
    #[arg(long, value_name = "NAME")]
    approver: Option<String>,
    /// Only records of this watched tree ("<root pid>-<root start time>").
    #[arg(long, value_name = "TREE_ID")]
    tree: Option<String>,
    /// Most events shown, counted after every filter.
    #[arg(long, default_value_t = 100)]
    limit: u32,
    /// Export: one line per event in this format instead of the table: ocsf (1.9),
    /// ocsf-1.5, ecs, cef or jsonl (the records as guard writes them).
    #[arg(long, value_parser = parse_format)]
    format: Option<Format>,
}

impl AuditArgs {
    fn query(&self) -> AuditQuery {
        AuditQuery {
            since_ms: self.since.unwrap_or(0),
            until_ms: self.until.unwrap_or(0),
            host: self.host.clone().unwrap_or_default(),
            request_id: self.request.clone().unwrap_or_default(),
            decision: self.decision.map(|d| d.label().to_string()).unwrap_or_default(),
            rule: self.rule.clone().unwrap_or_default(),
            approver: self.approver.clone().unwrap_or_default(),
            tree_id: self.tree.clone().unwrap_or_default(),
            limit: self.limit,
            ..Default::default()
        }
    }
}

/// What `guardctl audit` does besides listing and exporting events.
#[derive(Subcommand)]
enum AuditAction {
    /// The events that match the filters, as a table (or --json, or --format): the same as
    /// `guardctl audit` with them.
    Search(AuditArgs),
    /// The events that match the filters, one line each in --format (required).
    Export(AuditArgs),
    /// Check the server's hash chain and every host's stream in it, and their signed
    /// checkpoints: prints OK, or BROKEN with the first modified, deleted, reordered or
    /// inserted record (exit 1). Online (the server's rows, head and keys), or offline with
    /// --rows (an export of `audit rows`) and --keys (a file of `audit keys`, pinned).
    Verify {
        /// An export of the rows (`guardctl audit rows`), instead of asking the server.
        #[arg(long, value_name = "FILE")]
        rows: Option<PathBuf>,
        /// The public keys to check signatures with (`guardctl audit keys`); online, the
        /// server's own list is used when this is not given.
        #[arg(long, value_name = "FILE")]
        keys: Option<PathBuf>,
        /// The head the rows must end at, `SEQ:HASH` (offline; online it is the server's).
        #[arg(long, value_name = "SEQ:HASH")]
        head: Option<String>,
    },
    /// Every row of the server's chain, one JSON object per line (for an offline verify).
    Rows,
    /// The public keys that sign checkpoints, as a keys file for `verify --keys`.
    Keys,
}

#[derive(Clone, Copy, ValueEnum)]
enum DecisionArg {
    Allow,
    Deny,
    Pending,
}

impl DecisionArg {
    fn label(self) -> &'static str {
        match self {
            DecisionArg::Allow => "allow",
            DecisionArg::Deny => "deny",
            DecisionArg::Pending => "pending",
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum StateArg {
    Pending,
    Approved,
    Denied,
    Expired,
    Cancelled,
}

impl From<StateArg> for State {
    fn from(s: StateArg) -> State {
        match s {
            StateArg::Pending => State::Pending,
            StateArg::Approved => State::Approved,
            StateArg::Denied => State::Denied,
            StateArg::Expired => State::Expired,
            StateArg::Cancelled => State::Cancelled,
        }
    }
}

fn main() -> ExitCode {
    // clap exits 2 on usage errors; here 2 means "refused by the server", so usage is 1.
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { ExitCode::from(EXIT_FAILURE) } else { ExitCode::SUCCESS };
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("guardctl: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            if let Some(status) = err.downcast_ref::<tonic::Status>() {
                // Server messages quote names a tree chose (rules, objects): escaped per line.
                let text = failure::describe_status(status);
                let lines: Vec<String> = text.lines().map(|l| guard_api::screen::escape(l).into_owned()).collect();
                eprintln!("{}", lines.join("\n"));
                ExitCode::from(failure::exit_code(status))
            } else {
                eprintln!("guardctl: {err:#}");
                ExitCode::from(EXIT_FAILURE)
            }
        }
    }
}

impl ConnArgs {
    fn files(&self) -> Result<TlsFiles> {
        // Checked here, not by clap: `requires` between global flags given on both sides of the
        // subcommand is not reliable.
        let mut files = match (&self.pki, &self.as_name) {
            (Some(dir), Some(name)) => TlsFiles::from_pki(dir, "approver-", name, "--pki/--as"),
            (Some(_), None) => bail!("--pki needs --as NAME (the approver whose certificate to use)"),
            (None, Some(_)) => bail!("--as needs --pki DIR (the init-pki directory)"),
            _ => {
                let missing: Vec<&str> = [("--ca", &self.ca), ("--cert", &self.cert), ("--key", &self.key)]
                    .iter()
                    .filter(|(_, v)| v.is_none())
                    .map(|(f, _)| *f)
                    .collect();
                if missing.len() == 3 {
                    bail!("no credentials: give --pki DIR --as NAME, or --ca, --cert and --key (or GUARDCTL_CA, GUARDCTL_CERT, GUARDCTL_KEY)");
                }
                if !missing.is_empty() {
                    bail!("missing {} (or --pki DIR --as NAME)", missing.join(", "));
                }
                TlsFiles {
                    ca: (PathBuf::new(), "--ca"),
                    cert: (PathBuf::new(), "--cert"),
                    key: (PathBuf::new(), "--key"),
                }
            }
        };
        // Explicit files override the --pki ones.
        if let Some(p) = &self.ca {
            files.ca = (p.clone(), "--ca");
        }
        if let Some(p) = &self.cert {
            files.cert = (p.clone(), "--cert");
        }
        if let Some(p) = &self.key {
            files.key = (p.clone(), "--key");
        }
        Ok(files)
    }

    async fn channel(&self) -> Result<Channel> {
        let tls = TlsMaterial::load(&self.files()?)?;
        conn::connect(&self.server, &tls).await
    }
}

async fn run(cli: Cli) -> Result<()> {
    // An offline verify needs no server.
    if let Cmd::Audit { action: Some(AuditAction::Verify { rows: Some(rows), keys, head }), .. } = &cli.cmd {
        return verify_offline(rows, keys.as_deref(), head.as_deref());
    }
    if let Cmd::Enroll { name, dir } = &cli.cmd {
        let done = guardctl::enroll::enroll(name, dir)?;
        println!("key (keep it here): {}\nCSR (send it to an admin): {}", done.key.display(), done.csr.display());
        println!("the admin runs: guard-server cert sign --pki PKI_DIR --csr {}", done.csr.display());
        return Ok(());
    }
    let channel = cli.conn.channel().await?;
    let mut review = ReviewServiceClient::new(channel.clone());
    let json = cli.json;
    match cli.cmd {
        Cmd::Pending => {
            let resp = review
                .list_requests(ListRequestsRequest {
                    states: vec![State::Pending as i32],
                    host: String::new(),
                    limit: 0,
                })
                .await?
                .into_inner();
            let mut reqs = resp.requests;
            reqs.sort_by_key(|r| r.created_ms);
            if json {
                print_json_lines(reqs.iter().map(render::request_json))?;
            } else {
                print_pending(&reqs);
            }
        }
        Cmd::Watch => watch(&mut review, json).await?,
        Cmd::Show { id } => {
            let r = review.get_request(GetRequestRequest { id }).await?.into_inner();
            if json {
                print_json_lines(std::iter::once(render::request_json(&r)))?;
            } else {
                print!("{}", render::request_details(&r, now_ms()));
            }
        }
        Cmd::Approve { id, grant, comment } => {
            let grant_seconds = grant.map(|d| d.as_secs().max(1)).unwrap_or(0);
            let req = ReviewRequest { id, approve: true, comment: comment.unwrap_or_default(), grant_seconds };
            let r = review.review(req).await?.into_inner();
            print_outcome(&r, json)?;
        }
        Cmd::Deny { id, reason } => {
            if reason.trim().is_empty() {
                bail!("--reason must not be empty: it is shown to whoever asked");
            }
            let r = review.review(ReviewRequest { id, approve: false, comment: reason, grant_seconds: 0 }).await?;
            print_outcome(&r.into_inner(), json)?;
        }
        Cmd::Cancel { id, comment } => {
            let r = review.cancel_request(CancelRequestRequest { id, comment: comment.unwrap_or_default() }).await?;
            print_outcome(&r.into_inner(), json)?;
        }
        Cmd::List { state, host, limit } => {
            let states = state.into_iter().map(|s| State::from(s) as i32).collect();
            let resp = review
                .list_requests(ListRequestsRequest { states, host: host.unwrap_or_default(), limit })
                .await?
                .into_inner();
            let mut reqs = resp.requests;
            reqs.sort_by_key(|r| std::cmp::Reverse(r.created_ms));
            if json {
                print_json_lines(reqs.iter().map(render::request_json))?;
            } else {
                print_list(&reqs);
            }
        }
        Cmd::Audit { query, action: None } => {
            audit_action(AuditServiceClient::new(channel), AuditAction::Search(query), json).await?
        }
        Cmd::Audit { action: Some(action), .. } => audit_action(AuditServiceClient::new(channel), action, json).await?,
        Cmd::Whoami => {
            let me = review.who_am_i(WhoAmIRequest {}).await?.into_inner();
            if json {
                print_json_lines(std::iter::once(serde_json::json!({"name": me.name, "role": me.role})))?;
            } else {
                println!("{} ({})", me.name, me.role);
            }
        }
        Cmd::Enroll { .. } => unreachable!("enroll returned before connecting"),
    }
    Ok(())
}

fn read_keys(path: &std::path::Path) -> Result<Keys> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: not a keys file", path.display()))
}

/// Prints what verify found; a broken chain fails the command (exit 1).
fn verdict((text, whole): (String, bool)) -> Result<()> {
    print!("{text}");
    std::io::stdout().flush()?;
    if !whole {
        std::process::exit(i32::from(EXIT_FAILURE));
    }
    Ok(())
}

fn verify_offline(rows: &std::path::Path, keys: Option<&std::path::Path>, head: Option<&str>) -> Result<()> {
    let text = std::fs::read_to_string(rows).with_context(|| format!("reading {}", rows.display()))?;
    let keys = keys.map(read_keys).transpose()?;
    let head = head
        .map(|h| -> Result<(u64, &str)> {
            let (seq, hash) = h.split_once(':').context("--head: expected SEQ:HASH")?;
            Ok((seq.parse().context("--head: SEQ is not a number")?, hash))
        })
        .transpose()?;
    match parse_rows(&text) {
        Ok(rows) => verdict(chain::check(&rows, head, keys.as_ref())),
        Err(b) => verdict((format!("BROKEN: {b}\n"), false)),
    }
}

async fn audit_action(mut client: AuditServiceClient<Channel>, action: AuditAction, json: bool) -> Result<()> {
    match action {
        AuditAction::Search(query) => match query.format {
            Some(format) => export(client, query.query(), format).await,
            None => audit(client, query.query(), json).await,
        },
        AuditAction::Export(query) => {
            let format =
                query.format.context("audit export: --format is required (ocsf, ocsf-1.5, ecs, cef, jsonl)")?;
            export(client, query.query(), format).await
        }
        AuditAction::Verify { keys, head, .. } => {
            if head.is_some() {
                bail!("--head is for an offline verify (--rows): online, the server's head is used");
            }
            let (server_head, rows) = chain::fetch(&mut client).await?;
            let keys = match keys {
                Some(path) => read_keys(&path)?,
                None => chain::keys_of(&server_head),
            };
            verdict(chain::check(&rows, Some((server_head.seq, &server_head.hash)), Some(&keys)))
        }
        AuditAction::Rows => {
            let (_, rows) = chain::fetch(&mut client).await?;
            print_json_lines(rows.iter().map(|r| serde_json::to_value(r).expect("a row serialises")))
        }
        AuditAction::Keys => {
            let head = client.head(AuditHeadRequest {}).await?.into_inner();
            println!("{}", serde_json::to_string_pretty(&chain::keys_of(&head))?);
            Ok(())
        }
    }
}

fn print_json_lines(values: impl Iterator<Item = serde_json::Value>) -> Result<()> {
    let mut out = std::io::stdout().lock();
    for v in values {
        writeln!(out, "{v}")?;
    }
    out.flush()?;
    Ok(())
}

fn op(r: &Request) -> Operation {
    r.operation.clone().unwrap_or_default()
}

fn print_pending(reqs: &[Request]) {
    if reqs.is_empty() {
        println!("no pending requests");
        return;
    }
    let now = now_ms();
    let mut t = Table::new(&[
        "id",
        "age",
        "host",
        "user",
        "owner",
        "hook",
        "object",
        "rule",
        "stated reason",
        "approvals",
        "expires in",
        "flags",
    ]);
    for r in reqs {
        let op = op(r);
        let (got, need) = render::approvals(r);
        t.row(vec![
            r.id.clone(),
            render::short_duration(now - r.created_ms),
            r.host.clone(),
            op.user.clone(),
            op.owner.clone(),
            op.hook.clone(),
            keep_end(&op.object, 48),
            op.rule.clone(),
            keep_start(render::stated_reason(&op), 40),
            format!("{got}/{need}"),
            render::expires_in(r, now),
            render::flag_words(r),
        ]);
    }
    print!("{}", t.render());
}

fn print_list(reqs: &[Request]) {
    if reqs.is_empty() {
        println!("no requests");
        return;
    }
    let now = now_ms();
    let mut t = Table::new(&["id", "age", "host", "hook", "object", "rule", "state", "reason", "decided by"]);
    for r in reqs {
        let op = op(r);
        let pending = r.state == State::Pending as i32;
        t.row(vec![
            r.id.clone(),
            render::short_duration(now - r.created_ms),
            r.host.clone(),
            op.hook.clone(),
            keep_end(&op.object, 48),
            op.rule.clone(),
            render::state_label(r).to_string(),
            if pending { String::new() } else { r.reason.clone() },
            r.decided_by.clone(),
        ]);
    }
    print!("{}", t.render());
}

/// What a review or cancel left the request in.
fn print_outcome(r: &Request, json: bool) -> Result<()> {
    if json {
        return print_json_lines(std::iter::once(render::request_json(r)));
    }
    let (got, need) = render::approvals(r);
    if r.state == State::Pending as i32 {
        println!("{}: pending, {got}/{need} approvals", r.id);
    } else {
        let by = if r.decided_by.is_empty() { String::new() } else { format!(" by {}", r.decided_by) };
        println!("{}: {}{by}", r.id, render::state_label(r));
    }
    Ok(())
}

async fn watch(review: &mut ReviewServiceClient<Channel>, json: bool) -> Result<()> {
    let mut stream = review.watch_pending(WatchPendingRequest {}).await?.into_inner();
    let mut out = std::io::stdout();
    // One future for the whole watch, so a Ctrl-C between two messages is not missed.
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            _ = &mut ctrl_c => return Ok(()),
            msg = stream.message() => match msg? {
                Some(ev) => {
                    let line = if json { render::event_json(&ev).to_string() } else { render::event_line(&ev, now_ms()) };
                    // A closed pipe (`guardctl watch | head`) ends the watch quietly.
                    if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
                        return Ok(());
                    }
                }
                None => bail!("the server ended the watch"),
            },
        }
    }
}

/// A point in time as Unix milliseconds: a duration before now (`10m`) or an RFC 3339 time.
fn parse_time_ms(text: &str) -> Result<i64, String> {
    if let Ok(ago) = humantime::parse_duration(text) {
        return Ok(now_ms() - ago.as_millis() as i64);
    }
    guard_api::Timestamp::parse(text).map(|t| t.unix_ms()).map_err(|_| {
        format!("{text:?} is neither a duration (10m, 2h, 1d) nor an RFC 3339 time (2026-11-30T07:00:00Z)")
    })
}

fn parse_format(name: &str) -> Result<Format, String> {
    Format::parse(name).map_err(|e| e.to_string())
}

/// `audit --format`: each event's record in `format`, one per line. An event whose record this
/// version cannot read is not dropped silently: it is named on stderr and the export fails at
/// the end (after writing every event it could).
async fn export(mut client: AuditServiceClient<Channel>, query: AuditQuery, format: Format) -> Result<()> {
    let mut stream = client.query(query).await?.into_inner();
    let mut out = std::io::stdout().lock();
    let mut unreadable = Vec::new();
    while let Some(ev) = stream.message().await.context("reading the audit stream")? {
        match AuditRecord::from_json(&ev.json) {
            Ok(record) => writeln!(out, "{}", format.encode_line(&record))?,
            Err(e) => {
                eprintln!(
                    "guardctl: audit event {} (host {}) is not a record this version reads: {e}",
                    ev.seq, ev.host
                );
                unreadable.push(ev.seq);
            }
        }
    }
    out.flush()?;
    if !unreadable.is_empty() {
        bail!("{} audit event(s) could not be exported: seq {:?}", unreadable.len(), unreadable);
    }
    Ok(())
}

async fn audit(mut client: AuditServiceClient<Channel>, query: AuditQuery, json: bool) -> Result<()> {
    let mut stream = client.query(query).await?.into_inner();
    let mut t = Table::new(&["time", "seq", "host", "kind", "request", "event"]);
    let mut out = std::io::stdout();
    while let Some(ev) = stream.message().await.context("reading the audit stream")? {
        if json {
            writeln!(out, "{}", render::audit_json(&ev))?;
        } else {
            t.row(vec![
                render::timestamp(ev.time_ms),
                ev.seq.to_string(),
                ev.host.clone(),
                ev.kind.clone(),
                ev.request_id.clone(),
                match AuditRecord::from_json(&ev.json) {
                    Ok(record) => keep_start(&render::audit_summary(&record), 120),
                    // Not a record of this version's shape: shown as it is.
                    Err(_) => keep_start(&ev.json, 100),
                },
            ]);
        }
    }
    if !json {
        if t.is_empty() {
            println!("no audit events");
        } else {
            print!("{}", t.render());
        }
    }
    Ok(())
}
