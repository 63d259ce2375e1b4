//! `guard-server browser-e2e` (testing builds only): the person at the console in the VM suite.
//! `cargo xtask test` starts it on the host beside the guard-server it configured with a
//! console, and the guest's `console_browser_approves_with_a_passkey_and_denies_with_a_reason`
//! makes two held reads with hostile argv. In Debian's chromium this signs in (a wrong password
//! first), registers a passkey on a virtual authenticator, waits on the live queue until the
//! requests appear without a reload, checks the hostile argv is shown as text and runs nothing,
//! checks a cross-site style post without the CSRF token is refused, approves the first with
//! the passkey and denies the second with a reason. The guest checks what the kernel did and
//! the trail; this side fails (non-zero exit, the reason on stderr) when the page is wrong.
use crate::testing::browser::{self, Authenticator, Browser};
use anyhow::{bail, ensure, Context, Result};
use fantoccini::Locator;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// What the driver is told by xtask.
#[derive(Debug, Clone)]
pub struct Driver {
    /// The console's origin, `https://localhost:PORT`.
    pub console: String,
    /// The console's certificate (PEM), pinned by its key in the browser's profile.
    pub cert: PathBuf,
    pub user: String,
    pub password: String,
    /// Approve (with the passkey) the request on this object, deny the one on `deny_object`.
    pub approve_object: String,
    pub deny_object: String,
    pub deny_reason: String,
    pub screenshots: PathBuf,
    /// How long to wait for the guest's requests.
    pub wait: Duration,
}

impl Driver {
    pub async fn run(&self) -> Result<()> {
        let pem = std::fs::read(&self.cert).with_context(|| format!("reading {}", self.cert.display()))?;
        let (_, block) = x509_parser::pem::parse_x509_pem(&pem).context("the console certificate is not PEM")?;
        let (_, cert) = x509_parser::parse_x509_certificate(&block.contents).context("the console certificate")?;
        std::fs::create_dir_all(&self.screenshots)?;
        let b = Browser::start(&[browser::spki_pin(cert.public_key().raw)]).await;
        let outcome = self.drive(&b).await;
        if outcome.is_err() {
            b.screenshot(&self.screenshots.join("console-failure.png")).await;
            eprintln!("browser-e2e: the page at the failure:\n{}", b.client.source().await.unwrap_or_default());
        }
        b.close().await;
        outcome
    }

    async fn drive(&self, b: &Browser) -> Result<()> {
        let base = &self.console;
        b.goto(&format!("{base}/login")).await;
        b.fill("input[name=username]", &self.user).await;
        b.fill("input[name=password]", "not the password").await;
        b.click("form.login button").await;
        b.text_with(".notice", "Sign-in failed").await; // a wrong password is refused
        b.screenshot(&self.screenshots.join("console-sign-in-refused.png")).await;
        b.fill("input[name=username]", &self.user).await;
        b.fill("input[name=password]", &self.password).await;
        b.click("form.login button").await;
        b.text_with("h1", "Pending requests").await; // signed in: the queue

        b.goto(&format!("{base}/passkeys")).await;
        b.add_authenticator(Authenticator::default()).await;
        b.fill("[data-passkey-label]", "e2e laptop").await;
        b.click("[data-passkey-register]").await;
        let (state, text) = b.settled("[data-passkey-status]").await;
        ensure!(state == "ok", "registering the passkey: {text}");
        b.screenshot(&self.screenshots.join("console-passkeys.png")).await;

        b.goto(&format!("{base}/")).await;
        b.text("#live.on").await; // the event stream is open: from here on, no reloads
        eprintln!("browser-e2e: signed in with a passkey; waiting for the guest's requests");
        let approve = self.card_for(b, &self.approve_object).await?;
        self.check_hostile_argv_is_text(b, &approve).await?;
        b.screenshot(&self.screenshots.join("console-live-queue.png")).await;
        self.check_a_post_without_the_token_is_refused(b, &approve).await?;

        b.click(&format!("{approve} form[data-passkey-approve] button.approve")).await;
        b.text_with(".notice", "it is approved").await;
        eprintln!("browser-e2e: approved {approve} with the passkey");

        let deny = self.card_for(b, &self.deny_object).await?;
        b.fill(&format!("{deny} input[name=reason]"), &self.deny_reason).await;
        b.click(&format!("{deny} button.deny")).await;
        b.text_with(".notice", "it is denied").await;
        eprintln!("browser-e2e: denied {deny}");
        b.screenshot(&self.screenshots.join("console-after-decisions.png")).await;
        Ok(())
    }

    /// The CSS id (`#req-...`) of the card whose operation names `object`, once it appears on
    /// the open page (the live queue adds it; the page is never reloaded).
    async fn card_for(&self, b: &Browser, object: &str) -> Result<String> {
        let deadline = Instant::now() + self.wait;
        loop {
            // The live queue replaces cards as events come: an element gone stale between the
            // find and the read is simply looked for again on the next round.
            for card in b.client.find_all(Locator::Css("[id^='req-']")).await.unwrap_or_default() {
                let Ok(op) = card.find(Locator::Css(".op")).await else { continue };
                if op.text().await.unwrap_or_default().contains(object) {
                    if let Ok(Some(id)) = card.attr("id").await {
                        return Ok(format!("#{id}"));
                    }
                }
            }
            if Instant::now() > deadline {
                bail!("no card for {object} appeared within {:?}", self.wait);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The guest's argv carries markup, script, a terminal escape and 60 KB: the card shows the
    /// markup as text, the escape as `\x1b`, cuts the long argument, and nothing of it ran.
    async fn check_hostile_argv_is_text(&self, b: &Browser, card: &str) -> Result<()> {
        let text = b.text(card).await;
        // The card quotes each argument as a shell would, so look for the hostile parts inside.
        for shown in [r#"<script>alert("#, "<img src=x onerror=alert(2)>", r"\x1b]52;c;ZXZpbA=="] {
            ensure!(text.contains(shown), "the card does not show {shown:?} as text:\n{text}");
        }
        ensure!(text.contains("bytes in all"), "the 60 KB argument is not said to be cut:\n{text}");
        let injected = b.client.find_all(Locator::Css("img[src='x'], img[onerror]")).await?;
        ensure!(injected.is_empty(), "the argv became an <img> element");
        ensure!(b.client.get_alert_text().await.is_err(), "a script from the argv opened an alert");
        Ok(())
    }

    /// A post made by script in the signed-in page but without the form's CSRF token (as a
    /// forged form would) is refused with 403 and the card stays.
    async fn check_a_post_without_the_token_is_refused(&self, b: &Browser, card: &str) -> Result<()> {
        let id = card.trim_start_matches("#req-");
        let status = b
            .client
            .execute_async(
                "const [url, done] = arguments; \
                 fetch(url, {method: 'POST', credentials: 'same-origin', \
                   headers: {'Content-Type': 'application/x-www-form-urlencoded'}, \
                   body: 'action=approve'}).then(r => done(r.status), e => done(String(e)));",
                vec![serde_json::json!(format!("/requests/{id}/review"))],
            )
            .await?;
        ensure!(status == serde_json::json!(403), "a post without the CSRF token answered {status}");
        ensure!(!b.client.find_all(Locator::Css(card)).await?.is_empty(), "the card left after a forged post");
        Ok(())
    }
}
