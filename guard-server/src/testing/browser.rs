//! Debian's chromium, headless, driven through chromedriver (W3C WebDriver, the `fantoccini`
//! crate), for the console's real-browser tests.
//!
//! WebDriver rather than the DevTools protocol: the W3C WebAuthn spec (§11) defines the
//! virtual authenticator as WebDriver extension commands, which chromedriver implements, so
//! a test adds an authenticator, flips its user verification and reads its credentials with
//! plain HTTP calls next to the usual navigate/click/screenshot, with no CDP session to keep.
//!
//! Nothing is downloaded: `/usr/bin/chromium` and `/usr/bin/chromedriver` (Debian packages
//! `chromium`, `chromium-driver`; `cargo xtask setup` installs them). Each browser test carries
//! `#[cfg_attr(not(has_chromium), ignore = "SKIPPED: ...")]` (build.rs sets `has_chromium`),
//! so without them libtest reports it as ignored, never as passed; with them it runs, and
//! fails loudly when the browser cannot start.
use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// How long a step may take before the test fails with what the page showed.
pub const STEP: Duration = Duration::from_secs(20);

pub struct Browser {
    pub client: Client,
    driver: tokio::process::Child,
    /// chromedriver's port and the session id, to end the session from Drop when a test
    /// panics (killing chromedriver alone would orphan chromium).
    port: u16,
    session: Option<String>,
    // Kept until the browser is closed: chromium's fresh profile.
    _profile: tempfile::TempDir,
}

/// SHA-256 of a certificate's SubjectPublicKeyInfo, base64: what chromium's
/// `--ignore-certificate-errors-spki-list` takes. The test's server certificate is trusted
/// by this pin alone (and only for this browser profile), never by a system-wide CA.
pub fn spki_pin(spki_der: &[u8]) -> String {
    base64(ring::digest::digest(&ring::digest::SHA256, spki_der).as_ref())
}

fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n =
            (chunk[0] as u32) << 16 | (*chunk.get(1).unwrap_or(&0) as u32) << 8 | *chunk.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A W3C WebAuthn virtual authenticator's options (§11.2).
#[derive(Debug, Clone, Copy)]
pub struct Authenticator {
    pub has_user_verification: bool,
    pub is_user_verified: bool,
}

impl Default for Authenticator {
    /// A platform passkey provider that verifies its user (as a phone's fingerprint would).
    fn default() -> Self {
        Authenticator { has_user_verification: true, is_user_verified: true }
    }
}

/// A WebDriver command under the current session (`/session/{id}/<path>`).
#[derive(Debug)]
struct SessionCmd {
    method: http::Method,
    path: String,
    body: Option<Value>,
}

impl WebDriverCompatibleCommand for SessionCmd {
    fn endpoint(&self, base: &url::Url, session: Option<&str>) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/{}", session.unwrap_or_default(), self.path))
    }

    fn method_and_body(&self, _url: &url::Url) -> (http::Method, Option<String>) {
        (self.method.clone(), self.body.as_ref().map(Value::to_string))
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Browser {
    /// Starts chromedriver on a free port and a headless chromium with a fresh profile that
    /// trusts the certificates whose SPKI pins are given.
    pub async fn start(spki_pins: &[String]) -> Browser {
        for bin in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                Path::new(bin).exists(),
                "{bin} is missing (cargo xtask setup: apt-get install chromium chromium-driver)"
            );
        }
        let port = free_port();
        let driver = tokio::process::Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver starts");
        let profile = tempfile::tempdir().unwrap();
        let mut args = vec![
            "--headless".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            // The closed network refuses chromium's own background connections; without these
            // it keeps trying (and slows every page down).
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-dev-shm-usage".into(),
            format!("--user-data-dir={}", profile.path().display()),
            // A phone-sized window: the console must work there.
            "--window-size=412,915".into(),
        ];
        if !spki_pins.is_empty() {
            // Honoured only with --user-data-dir (chromium's own safeguard).
            args.push(format!("--ignore-certificate-errors-spki-list={}", spki_pins.join(",")));
        }
        let mut caps = serde_json::Map::new();
        caps.insert("goog:chromeOptions".into(), json!({ "binary": CHROMIUM, "args": args }));
        caps.insert("acceptInsecureCerts".into(), json!(false));
        let url = format!("http://127.0.0.1:{port}/");
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let deadline = Instant::now() + STEP;
        let client = loop {
            match ClientBuilder::new(connector.clone()).capabilities(caps.clone()).connect(&url).await {
                Ok(c) => break c,
                // chromedriver is still starting.
                Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
                Err(e) => panic!("no WebDriver session from {CHROMEDRIVER} on port {port}: {e}"),
            }
        };
        let session = client.session_id().await.ok().flatten();
        Browser { client, driver, port, session, _profile: profile }
    }

    async fn session(&self, method: http::Method, path: String, body: Option<Value>) -> Value {
        let what = format!("{method} {path}");
        self.client.issue_cmd(SessionCmd { method, path, body }).await.unwrap_or_else(|e| panic!("{what}: {e}"))
    }

    /// Adds a CTAP2 virtual authenticator (internal transport, resident keys) to this page's
    /// browser; returns its id.
    pub async fn add_authenticator(&self, a: Authenticator) -> String {
        let body = json!({
            "protocol": "ctap2",
            "transport": "internal",
            "hasResidentKey": true,
            "hasUserVerification": a.has_user_verification,
            "isUserVerified": a.is_user_verified,
            "isUserConsenting": true,
        });
        let v = self.session(http::Method::POST, "webauthn/authenticator".into(), Some(body)).await;
        v.as_str()
            .map(str::to_string)
            .or_else(|| v["authenticatorId"].as_str().map(str::to_string))
            .expect("authenticator id")
    }

    /// Removes a virtual authenticator (§11.3) and the credentials it held.
    pub async fn remove_authenticator(&self, authenticator: &str) {
        self.session(http::Method::DELETE, format!("webauthn/authenticator/{authenticator}"), None).await;
    }

    /// Whether the authenticator's next user verification succeeds (W3C WebAuthn §11.8).
    pub async fn set_user_verified(&self, authenticator: &str, verified: bool) {
        let path = format!("webauthn/authenticator/{authenticator}/uv");
        self.session(http::Method::POST, path, Some(json!({ "isUserVerified": verified }))).await;
    }

    /// The credentials the authenticator holds (§11.5), each with its signCount.
    pub async fn credentials(&self, authenticator: &str) -> Vec<Value> {
        let path = format!("webauthn/authenticator/{authenticator}/credentials");
        match self.session(http::Method::GET, path, None).await {
            Value::Array(list) => list,
            other => panic!("credentials: {other}"),
        }
    }

    pub async fn goto(&self, url: &str) {
        self.client.goto(url).await.unwrap_or_else(|e| panic!("goto {url}: {e}"));
    }

    /// Clicks the element matching `css`, waiting for it. A page that is replaced between the
    /// find and the click (a form post's answer arriving) makes the element stale: find it
    /// again, until STEP has passed.
    pub async fn click(&self, css: &str) {
        let deadline = Instant::now() + STEP;
        loop {
            let el = self.client.wait().at_most(STEP).for_element(Locator::Css(css)).await;
            match el.unwrap_or_else(|e| panic!("no {css}: {e}")).click().await {
                Ok(()) => return,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("click {css}: {e}; trying again");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("click {css}: {e}"),
            }
        }
    }

    /// Replaces the value of the input matching `css` with `text`, typed as a user would.
    pub async fn fill(&self, css: &str, text: &str) {
        let el = self.client.wait().at_most(STEP).for_element(Locator::Css(css)).await;
        let el = el.unwrap_or_else(|e| panic!("no {css}: {e}"));
        el.clear().await.unwrap_or_else(|e| panic!("clear {css}: {e}"));
        el.send_keys(text).await.unwrap_or_else(|e| panic!("type into {css}: {e}"));
    }

    /// The text of the first element matching `css`, waiting for it to appear. An element made
    /// stale by the page being replaced under it is found again, until STEP has passed.
    pub async fn text(&self, css: &str) -> String {
        let deadline = Instant::now() + STEP;
        loop {
            let el = self.client.wait().at_most(STEP).for_element(Locator::Css(css)).await;
            match el.unwrap_or_else(|e| panic!("no {css}: {e}")).text().await {
                Ok(text) => return text,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("text of {css}: {e}; trying again");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("text of {css}: {e}"),
            }
        }
    }

    /// Waits until the element matching `css` says `needle`, and returns its text. After a click
    /// that posts a form, the old page stays until the answer arrives: reading once would see
    /// the old page's text.
    pub async fn text_with(&self, css: &str, needle: &str) -> String {
        let deadline = Instant::now() + STEP;
        loop {
            if let Ok(el) = self.client.find(Locator::Css(css)).await {
                if let Ok(text) = el.text().await {
                    if text.contains(needle) {
                        return text;
                    }
                }
            }
            if Instant::now() > deadline {
                let page = self.client.source().await.unwrap_or_default();
                panic!("{css} did not say {needle:?} within {STEP:?}; page:\n{page}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the element matching `css` has a `data-state` other than "working" (or
    /// none), then returns (state, text).
    pub async fn settled(&self, css: &str) -> (String, String) {
        let deadline = Instant::now() + STEP;
        loop {
            if let Ok(el) = self.client.find(Locator::Css(css)).await {
                let state = el.attr("data-state").await.ok().flatten().unwrap_or_default();
                if !state.is_empty() && state != "working" {
                    return (state, el.text().await.unwrap_or_default());
                }
            }
            if Instant::now() > deadline {
                let page = self.client.source().await.unwrap_or_default();
                panic!("{css} did not settle within {STEP:?}; page:\n{page}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Saves a PNG of the page to `path` (creating its directory).
    pub async fn screenshot(&self, path: &Path) {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).unwrap();
        }
        let png = self.client.screenshot().await.expect("screenshot");
        std::fs::write(path, png).unwrap();
    }

    /// Ends the session and chromedriver (chromium goes with its session).
    pub async fn close(mut self) {
        if self.client.clone().close().await.is_ok() {
            self.session = None;
        }
        let _ = self.driver.kill().await;
    }
}

impl Drop for Browser {
    /// After a panic (or a forgotten `close`): ends the WebDriver session with a blocking
    /// DELETE, so chromedriver quits its chromium; then `kill_on_drop` ends chromedriver.
    fn drop(&mut self) {
        let Some(session) = self.session.take() else { return };
        use std::io::{Read, Write};
        let Ok(mut tcp) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else { return };
        let _ = tcp.set_read_timeout(Some(Duration::from_secs(10)));
        let request = format!(
            "DELETE /session/{session} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        );
        // chromedriver answers once chromium has quit; the first bytes of the answer are enough.
        if tcp.write_all(request.as_bytes()).is_ok() {
            let _ = tcp.read(&mut [0u8; 256]);
        }
    }
}

/// Where a test keeps its screenshots: `$GUARD_SCREENSHOTS` when set (e.g. `docs/screenshots`
/// for the README), else the test's temporary directory.
pub fn screenshot_dir(fallback: &Path) -> PathBuf {
    std::env::var_os("GUARD_SCREENSHOTS").map(PathBuf::from).unwrap_or_else(|| fallback.to_path_buf())
}
