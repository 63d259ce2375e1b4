//! The console in Debian's real chromium (headless, WebDriver, a W3C virtual authenticator):
//! sign in, register a passkey, see a request appear live, approve it with the passkey (the
//! agent's hold is approved and the review says password+passkey), deny another with a reason.
mod common;

use common::*;
use guard_proto::v1::State;
use guard_server::console::accounts::{self, Role};
use guard_server::fanout::Fanout;
use guard_server::store;
use guard_server::testing::browser::{self, Authenticator, Browser};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

const PASSWORD: &str = "correct horse battery";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(has_chromium), ignore = "SKIPPED: no /usr/bin/chromium and /usr/bin/chromedriver on the build machine")]
async fn sign_in_register_a_passkey_approve_live_with_it_and_deny_with_a_reason() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let base = format!("https://localhost:{port}");
    let site = Site::with(config().extra(&format!(
        "[passkeys]\nrequired = \"always\"\n[console]\nlisten = \"127.0.0.1:{port}\"\npublic_url = \"{base}\"\n"
    )));
    let server = site.start(None).await;
    let users = store::open(&site.db_url(), Fanout::default()).await.unwrap();
    accounts::add_user(users.as_ref(), "bob", Role::Approver, PASSWORD, guard_server::lifecycle::now_ms())
        .await
        .unwrap();

    // The browser trusts the server's certificate by its key's pin, in this profile only.
    let der = CertificateDer::from_pem_file(site.pki().join("server.crt")).unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    let b = Browser::start(&[browser::spki_pin(cert.public_key().raw)]).await;
    let shots = browser::screenshot_dir(site.dir.path());

    b.goto(&format!("{base}/login")).await;
    b.fill("input[name=username]", "bob").await;
    b.fill("input[name=password]", "wrong password").await;
    b.click("form.login button").await;
    b.text_with(".notice", "Sign-in failed").await; // a wrong password is refused
    b.fill("input[name=username]", "bob").await;
    b.fill("input[name=password]", PASSWORD).await;
    b.click("form.login button").await;
    b.text_with("h1", "Pending requests").await;

    b.goto(&format!("{base}/passkeys")).await;
    b.add_authenticator(Authenticator::default()).await;
    b.fill("[data-passkey-label]", "laptop").await;
    b.click("[data-passkey-register]").await;
    let (state, text) = b.settled("[data-passkey-status]").await;
    assert_eq!(state, "ok", "{text}");

    b.goto(&format!("{base}/")).await;
    b.text("#live.on").await; // the event stream is open
    let mut agent = server.agent("h1").await;
    let mut first =
        agent.submit(submit(op("etc-writes", "100-1", "dev", 2000, "/usr/bin/vi"), 60, "")).await.unwrap().into_inner();
    let created = next(&mut first).await;
    // It appears without a reload.
    let card = format!("#req-{}", created.id);
    assert!(b.text(&format!("{card} .op")).await.contains("/usr/bin/vi"));
    b.screenshot(&shots.join("console-live-queue.png")).await;
    b.click(&format!("{card} form[data-passkey-approve] button.approve")).await;
    b.text_with(".notice", "it is approved").await;
    let decided = next(&mut first).await;
    assert_eq!(state_of(&decided), State::Approved, "the held operation goes ahead");
    assert_eq!(decided.reviews[0].verified_by, "password+passkey");

    let mut second =
        agent.submit(submit(op("etc-writes", "100-2", "dev", 2000, "/usr/bin/rm"), 60, "")).await.unwrap().into_inner();
    let other = next(&mut second).await;
    let card = format!("#req-{}", other.id);
    b.fill(&format!("{card} input[name=reason]"), "not during the freeze").await;
    b.click(&format!("{card} button.deny")).await;
    b.text_with(".notice", "it is denied").await;
    let denied = next(&mut second).await;
    assert_eq!((state_of(&denied), denied.comment.as_str()), (State::Denied, "not during the freeze"));
    b.close().await;
    server.stop().await;
}

fn state_of(r: &guard_proto::v1::Request) -> State {
    state(r)
}
