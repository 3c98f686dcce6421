//! Passwords and email end to end: mails go through a real SMTP server
//! (aiosmtpd, `TestSmtp`) or, under dev, into the development mailbox.

use std::time::{Duration, Instant};

use mage_domain::testing::TestSmtp;
use mage_jobs::mail::SmtpSettings;
use serde_json::{Value, json};

use crate::support::{LOGIN, PASSWORD, TestApp, Workers, code, scalar_i64};

const REQUEST_RESET: &str = "mutation($e: String!) { requestPasswordReset(email: $e) }";
const RESET: &str = "mutation($t: String!, $p: String!) { resetPassword(token: $t, newPassword: $p) { token user { email } } }";
const VERIFY: &str =
    "mutation($t: String!) { verifyEmail(token: $t) { email emailVerified credits { balance } } }";
const RESEND: &str = "mutation { resendVerification }";
const ME: &str = "{ me { email emailVerified credits { balance } } }";
const NEW_PASSWORD: &str = "a brand new passphrase";
const MAIL_WAIT: Duration = Duration::from_secs(20);

async fn workers_sending_to(app: &TestApp, smtp: &TestSmtp) -> Workers {
    let smtp = SmtpSettings::parse(&smtp.url()).expect("SMTP URL");
    app.start_workers_with(move |w| w.mail.smtp = Some(smtp)).await
}

/// The message's text with quoted-printable soft breaks and `=3D` undone
/// (lettre picks the encoding; links must read the same either way).
fn plain(message: &str) -> String {
    message.replace("=\r\n", "").replace("=\n", "").replace("=3D", "=")
}

fn subject(message: &str) -> &str {
    message.lines().find_map(|l| l.strip_prefix("Subject: ")).unwrap_or_default()
}

/// The token of the `{page}?token=` link in a mail.
fn link_token(message: &str, page: &str) -> String {
    let text = plain(message);
    let needle = format!("/{page}?token=");
    let at = text.find(&needle).unwrap_or_else(|| panic!("no {needle} link in:\n{text}"));
    text[at + needle.len()..].chars().take_while(|c| c.is_ascii_alphanumeric() || "_-".contains(*c)).collect()
}

/// The messages with `subject`, once there are `n` of them.
async fn wait_for_subject(smtp: &TestSmtp, subject_is: &str, n: usize) -> Vec<String> {
    let deadline = Instant::now() + MAIL_WAIT;
    loop {
        let got: Vec<String> = smtp.messages().into_iter().filter(|m| subject(m) == subject_is).collect();
        if got.len() >= n {
            return got;
        }
        assert!(Instant::now() < deadline, "{n} mails {subject_is:?} expected, {} arrived", got.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn ok(res: &Value) {
    assert!(res.get("errors").is_none(), "{res}");
}

fn message_of(res: &Value) -> &str {
    res["errors"][0]["message"].as_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_password_reset_goes_through_smtp_and_its_link_works_once() {
    let smtp = TestSmtp::start().await;
    let app = TestApp::start().await;
    let _workers = workers_sending_to(&app, &smtp).await;
    app.register("forgetful@example.com").await;

    let res = app.gql(REQUEST_RESET, json!({ "e": " Forgetful@Example.com " }), None).await;
    assert_eq!(res, json!({ "data": { "requestPasswordReset": true } }));
    let mails = wait_for_subject(&smtp, "Reset your password", 1).await;
    let mail = &mails[0];
    assert!(mail.contains("X-RcptTo: forgetful@example.com"), "{mail}");
    assert!(plain(mail).contains(&format!("{}/reset-password?token=", app.settings.public_url)), "{mail}");
    let token = link_token(mail, "reset-password");
    assert!(token.len() >= 43, "256 bits or more: {token}");

    // Only the token's SHA-256 is stored, and the sent body is gone.
    let mut conn = app.conn().await;
    let stored = scalar_i64(
        &mut conn,
        &format!(
            "SELECT count(*) AS n FROM email_tokens WHERE purpose = 'reset_password' \
             AND token_hash = sha256(convert_to('{token}', 'UTF8')) AND used_at IS NULL \
             AND expires_at BETWEEN now() + interval '29 minutes' AND now() + interval '30 minutes'"
        ),
    )
    .await;
    assert_eq!(stored, 1);
    drop(conn);
    // Marked sent (its body, the live link, cleared) in the transaction
    // that sent it, which commits just after the SMTP server said yes.
    let deadline = Instant::now() + Duration::from_secs(5);
    while scalar_i64(
        &mut *app.conn().await,
        "SELECT count(*) AS n FROM mails WHERE subject = 'Reset your password' \
         AND sent_at IS NOT NULL AND body_text IS NULL",
    )
    .await
        != 1
    {
        assert!(Instant::now() < deadline, "the sent mail was not marked sent with its body cleared");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let res = app.gql(RESET, json!({ "t": token, "p": NEW_PASSWORD }), None).await;
    ok(&res);
    assert_eq!(res["data"]["resetPassword"]["user"]["email"], "forgetful@example.com");
    let signed_in = res["data"]["resetPassword"]["token"].as_str().expect("token").to_owned();
    let me = app.gql(ME, json!({}), Some(&signed_in)).await;
    assert_eq!(me["data"]["me"]["email"], "forgetful@example.com", "{me}");

    // Single use.
    let again = app.gql(RESET, json!({ "t": token, "p": "yet another passphrase" }), None).await;
    assert_eq!(code(&again), "BAD_USER_INPUT");
    assert!(message_of(&again).contains("already been used"), "{again}");
    let bogus = app.gql(RESET, json!({ "t": "mage_et_nothing", "p": NEW_PASSWORD }), None).await;
    assert_eq!(code(&bogus), "BAD_USER_INPUT");
    assert!(message_of(&bogus).contains("not valid"), "{bogus}");

    let old = app.gql(LOGIN, json!({ "e": "forgetful@example.com", "p": PASSWORD }), None).await;
    assert!(old.get("errors").is_some(), "the old password still works: {old}");
    let new = app.gql(LOGIN, json!({ "e": "forgetful@example.com", "p": NEW_PASSWORD }), None).await;
    assert!(new["data"]["login"]["token"].is_string(), "{new}");
}

/// Every device is signed out: the old sessions' tokens are refused at once
/// here and, through the revocation poll, on every instance.
#[tokio::test(flavor = "multi_thread")]
async fn a_password_reset_ends_every_session() {
    let smtp = TestSmtp::start().await;
    let app = TestApp::start().await;
    let _workers = workers_sending_to(&app, &smtp).await;
    let (first, _) = app.register("stolen@example.com").await;
    let second = app.gql(LOGIN, json!({ "e": "stolen@example.com", "p": PASSWORD }), None).await;
    let second = second["data"]["login"]["token"].as_str().expect("token").to_owned();

    ok(&app.gql(REQUEST_RESET, json!({ "e": "stolen@example.com" }), None).await);
    let token = link_token(&wait_for_subject(&smtp, "Reset your password", 1).await[0], "reset-password");
    ok(&app.gql(RESET, json!({ "t": token, "p": NEW_PASSWORD }), None).await);

    // Revocations reach every instance through a poll: allow it a moment.
    for old in [first, second] {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let res = app.gql(ME, json!({}), Some(&old)).await;
            if res.get("errors").is_some() && code(&res) == "UNAUTHENTICATED" {
                break;
            }
            assert!(Instant::now() < deadline, "an old session still works after the reset: {res}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let ended = scalar_i64(
        &mut *app.conn().await,
        "SELECT count(*) AS n FROM sessions WHERE revoked_reason = 'password_reset'",
    )
    .await;
    assert!(ended >= 2, "{ended}");
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// An unknown address gets the very same answer, after the same work: the
/// API never looks the account up (the worker does). Timing is compared
/// by medians over 50 calls each, interleaved, with a wide margin: this
/// guards against a lookup creeping into the resolver, not for speed.
#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_address_is_answered_like_a_known_one() {
    const N: usize = 50;
    let smtp = TestSmtp::start().await;
    let app = TestApp::start().await;
    let _workers = workers_sending_to(&app, &smtp).await;
    // Accounts without the hashing of a sign-up (the timing is the point,
    // not the accounts), each with its (empty) credit account.
    app.sql(&format!(
        "INSERT INTO users (email, password_hash) \
         SELECT 'known' || i || '@example.com', 'not-a-hash' FROM generate_series(1, {N}) AS i; \
         INSERT INTO credit_accounts (user_id) SELECT id FROM users;"
    ))
    .await;

    let call = async |email: String| {
        let body = json!({ "query": REQUEST_RESET, "variables": { "e": email } });
        let started = Instant::now();
        let res = app.http.post(app.url("/graphql")).json(&body).send().await.expect("POST");
        let status = res.status();
        let text = res.text().await.expect("body");
        (started.elapsed(), status, text)
    };
    // Warm up connections, scripts and caches on addresses of neither kind.
    for i in 0..5 {
        call(format!("warm{i}@example.org")).await;
    }
    let (mut known, mut unknown) = (Vec::new(), Vec::new());
    for i in 1..=N {
        // Interleaved, each kind first in turn, so a slow moment of the
        // machine (or the worker busy with the previous request) falls on
        // both alike.
        let pair = [(true, format!("known{i}@example.com")), (false, format!("nobody{i}@example.com"))];
        for (is_known, email) in if i % 2 == 0 { pair } else { [pair[1].clone(), pair[0].clone()] } {
            let (t, status, text) = call(email).await;
            assert_eq!((status.as_u16(), text.as_str()), (200, r#"{"data":{"requestPasswordReset":true}}"#));
            if is_known { known.push(t) } else { unknown.push(t) }
        }
    }
    let (k, u) = (median(known), median(unknown));
    let margin = Duration::from_millis(5).max(k.max(u) / 2);
    println!("requestPasswordReset medians: known {k:?}, unknown {u:?} (margin {margin:?})");
    assert!(k.abs_diff(u) < margin, "median known {k:?}, unknown {u:?}: more apart than {margin:?}");

    // Every known address got its mail, and nobody else got one.
    wait_for_subject(&smtp, "Reset your password", N).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mails: Vec<String> =
        smtp.messages().into_iter().filter(|m| subject(m) == "Reset your password").collect::<Vec<_>>();
    assert_eq!(mails.len(), N, "{} mails", mails.len());
    assert!(mails.iter().all(|m| m.contains("X-RcptTo: known")), "a mail to an unknown address");
    assert_eq!(app.count("mails").await, N as i64);
    assert_eq!(app.count("email_tokens").await, N as i64);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fourth_reset_request_within_the_hour_sends_nothing() {
    let smtp = TestSmtp::start().await;
    let app = TestApp::start().await;
    let _workers = workers_sending_to(&app, &smtp).await;
    app.register("impatient@example.com").await;
    for _ in 0..4 {
        let res = app.gql(REQUEST_RESET, json!({ "e": "impatient@example.com" }), None).await;
        assert_eq!(res, json!({ "data": { "requestPasswordReset": true } }), "always true");
    }
    wait_for_subject(&smtp, "Reset your password", 3).await;
    // Time for a fourth to arrive, were one sent.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let resets = smtp.messages().into_iter().filter(|m| subject(m) == "Reset your password").count();
    assert_eq!(resets, 3);
    let rows = scalar_i64(
        &mut *app.conn().await,
        "SELECT count(*) AS n FROM mails WHERE subject = 'Reset your password'",
    )
    .await;
    assert_eq!(rows, 3);
    // A malformed address says so (it names no account either way).
    let res = app.gql(REQUEST_RESET, json!({ "e": "not an address" }), None).await;
    assert_eq!(code(&res), "BAD_USER_INPUT");
}

/// With MAGE_SIGNUP_BONUS_REQUIRES_VERIFIED_EMAIL the signup credits come
/// with the verification, once, however many links are opened however
/// often and at once.
#[tokio::test(flavor = "multi_thread")]
async fn verification_grants_the_signup_bonus_once() {
    let smtp = TestSmtp::start().await;
    let app = TestApp::start_with(|s| s.signup_bonus_requires_verified_email = true).await;
    let _workers = workers_sending_to(&app, &smtp).await;
    let (token, _) = app.register("newcomer@example.com").await;
    let me = app.gql(ME, json!({}), Some(&token)).await;
    assert_eq!(
        me["data"]["me"],
        json!({ "email": "newcomer@example.com", "emailVerified": false, "credits": { "balance": 0 } })
    );
    // A second link, then both opened twice, all at once.
    let res = app.gql(RESEND, json!({}), Some(&token)).await;
    assert_eq!(res["data"]["resendVerification"], true, "{res}");
    let mails = wait_for_subject(&smtp, "Confirm your email address", 2).await;
    let links: Vec<String> = mails.iter().map(|m| link_token(m, "verify-email")).collect();
    assert_ne!(links[0], links[1]);
    assert!(plain(&mails[0]).contains(&format!("{}/verify-email?token=", app.settings.public_url)));
    let results = app.gql_concurrently(4, VERIFY, |i| json!({ "t": links[i % 2] }), None).await;
    for res in &results {
        ok(res);
        assert_eq!(res["data"]["verifyEmail"]["emailVerified"], true, "{res}");
    }
    let me = app.gql(ME, json!({}), Some(&token)).await;
    assert_eq!(me["data"]["me"]["emailVerified"], true);
    assert_eq!(me["data"]["me"]["credits"]["balance"], 100, "{me}");
    let grants = scalar_i64(
        &mut *app.conn().await,
        "SELECT count(*) AS n FROM credit_entries WHERE idempotency_key LIKE 'signup:%'",
    )
    .await;
    assert_eq!(grants, 1);
    // Verified: nothing more to send.
    let res = app.gql(RESEND, json!({}), Some(&token)).await;
    assert_eq!(res["data"]["resendVerification"], false, "{res}");
    let bad = app.gql(VERIFY, json!({ "t": "mage_et_unknown" }), None).await;
    assert_eq!(code(&bad), "BAD_USER_INPUT");
}

#[tokio::test(flavor = "multi_thread")]
async fn without_the_setting_the_bonus_comes_at_registration_and_verification_adds_nothing() {
    let app = TestApp::start().await;
    let (token, _) = app.register("eager@example.com").await;
    let body: String = {
        use diesel::prelude::*;
        use diesel_async::RunQueryDsl;
        use mage_domain::schema::mails;
        mails::table
            .filter(mails::to_address.eq("eager@example.com"))
            .select(mails::body_text.assume_not_null())
            .first(&mut *app.conn().await)
            .await
            .expect("the verification mail is in the outbox")
    };
    let res = app.gql(VERIFY, json!({ "t": link_token(&body, "verify-email") }), None).await;
    ok(&res);
    assert_eq!(res["data"]["verifyEmail"]["credits"]["balance"], 100);
    let me = app.gql(ME, json!({}), Some(&token)).await;
    assert_eq!(me["data"]["me"]["credits"]["balance"], 100);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_verification_link_verifies_only_the_address_it_was_sent_to() {
    let app = TestApp::start().await;
    let (token, id) = app.register("before@example.com").await;
    let body = outbox_body(&app, "before@example.com").await;
    app.sql(&format!("UPDATE users SET email = 'after@example.com' WHERE id = '{id}'")).await;
    let res = app.gql(VERIFY, json!({ "t": link_token(&body, "verify-email") }), None).await;
    assert_eq!(code(&res), "BAD_USER_INPUT");
    assert!(message_of(&res).contains("no longer"), "{res}");
    let me = app.gql(ME, json!({}), Some(&token)).await;
    assert_eq!(me["data"]["me"]["emailVerified"], false);
}

async fn outbox_body(app: &TestApp, to: &str) -> String {
    use diesel::prelude::*;
    use diesel_async::RunQueryDsl;
    use mage_domain::schema::mails;
    mails::table
        .filter(mails::to_address.eq(to))
        .order(mails::created_at.desc())
        .select(mails::body_text.assume_not_null())
        .first(&mut *app.conn().await)
        .await
        .expect("a mail in the outbox")
}

#[tokio::test(flavor = "multi_thread")]
async fn resend_verification_is_limited_to_three_an_hour() {
    let app = TestApp::start().await;
    let (token, _) = app.register("resender@example.com").await;
    for _ in 0..3 {
        let res = app.gql(RESEND, json!({}), Some(&token)).await;
        assert_eq!(res["data"]["resendVerification"], true, "{res}");
    }
    let res = app.gql(RESEND, json!({}), Some(&token)).await;
    assert_eq!(code(&res), "RATE_LIMITED");
    assert_eq!(app.count("mails").await, 4, "the registration's mail and three more");
    assert_eq!(code(&app.gql(RESEND, json!({}), None).await), "UNAUTHENTICATED");
}

/// A mail whose job was lost (written, never enqueued) is found by the
/// sweeper a minute later and sent, once.
#[tokio::test(flavor = "multi_thread")]
async fn the_sweeper_sends_a_mail_whose_job_was_lost() {
    let smtp = TestSmtp::start().await;
    let app = TestApp::start().await;
    app.sql(
        "INSERT INTO mails (to_address, subject, body_text, created_at) \
         VALUES ('lost@example.com', 'A lost mail', 'Hello', now() - interval '2 minutes'), \
                ('fresh@example.com', 'A fresh mail', 'Hello', now())",
    )
    .await;
    let redis = app.redis.redis();
    let sweep = || mage_jobs::sweep_once(&app.pool, &redis, &app.queues, Duration::from_secs(900));
    let report = sweep().await.expect("sweep");
    assert_eq!(report.mails_requeued, 1, "only the old one: the fresh one may still be on its way");
    let _workers = workers_sending_to(&app, &smtp).await;
    wait_for_subject(&smtp, "A lost mail", 1).await;
    assert_eq!(sweep().await.expect("sweep").mails_requeued, 0, "sent, so nothing to do");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_send_is_counted_on_the_mail_which_waits() {
    let app = TestApp::start().await;
    // A port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let smtp = SmtpSettings::parse(&format!("smtp://127.0.0.1:{closed}")).expect("URL");
    let _workers = app.start_workers_with(move |w| w.mail.smtp = Some(smtp)).await;
    app.register("unlucky@example.com").await;
    let deadline = Instant::now() + MAIL_WAIT;
    loop {
        let failed = scalar_i64(
            &mut *app.conn().await,
            "SELECT count(*) AS n FROM mails WHERE attempts >= 1 AND last_error LIKE 'SMTP%' \
             AND sent_at IS NULL AND body_text IS NOT NULL",
        )
        .await;
        if failed == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "the failed send was not recorded");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Under dev with no SMTP, mails land in the development mailbox, marked
/// sent with their bodies kept; the page is 404 outside dev.
#[tokio::test(flavor = "multi_thread")]
async fn the_dev_mailbox_shows_mails_under_dev_only() {
    let app = TestApp::start_with(|s| s.dev_mode = true).await;
    let _workers = app.start_workers_with(|w| w.mail.dev_mailbox = true).await;
    app.register("developer@example.com").await;
    ok(&app.gql(REQUEST_RESET, json!({ "e": "developer@example.com" }), None).await);
    let deadline = Instant::now() + MAIL_WAIT;
    let page = loop {
        let res = app.http.get(app.url("/dev/mail")).send().await.expect("GET /dev/mail");
        assert_eq!(res.status(), 200);
        let page = res.text().await.expect("page");
        let both = page.contains("Reset your password") && page.contains("Confirm your email address");
        if both && page.matches("delivered").count() == 2 {
            break page;
        }
        assert!(Instant::now() < deadline, "the mails never showed: {page}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(page.contains("To <strong>developer@example.com</strong>"), "{page}");
    assert!(page.contains("delivered"), "{page}");
    let href = format!("<a href=\"{}/reset-password?token=", app.settings.public_url);
    assert!(page.contains(&href), "the link is clickable: {page}");
    // The link in the page works.
    let token = link_token(&page, "reset-password");
    ok(&app.gql(RESET, json!({ "t": token, "p": NEW_PASSWORD }), None).await);
    let kept = scalar_i64(
        &mut *app.conn().await,
        "SELECT count(*) AS n FROM mails WHERE sent_at IS NOT NULL AND body_text IS NOT NULL",
    )
    .await;
    assert_eq!(kept, 2);

    let prod = TestApp::start().await;
    let res = prod.http.get(prod.url("/dev/mail")).send().await.expect("GET /dev/mail");
    assert_eq!(res.status(), 404);
}

/// The development mailbox of a real `mage dev`, in headless Chromium,
/// saved as a screenshot (`dev-mail.png` in the test's temporary folder).
#[tokio::test(flavor = "multi_thread")]
async fn the_dev_mailbox_in_headless_chromium() {
    use crate::playground::{Page, chromium_or_skip, launch};
    use crate::support::{post_graphql, process, register_at};
    use base64::Engine;
    let Some(binary) = chromium_or_skip() else { return };
    let dev = process::Dev::start().await;
    let http = reqwest::Client::new();
    let (base, gql) = (dev.url(""), dev.url("/graphql"));
    register_at(&http, &gql, "browser-mail@example.com").await;
    let res =
        post_graphql(&http, &gql, REQUEST_RESET, json!({ "e": "browser-mail@example.com" }), None).await;
    ok(&res);

    let (browser, devtools) = launch(&binary);
    let mut page = Page::open(devtools).await;
    let deadline = Instant::now() + MAIL_WAIT;
    loop {
        page.call("Page.navigate", json!({ "url": format!("{base}/dev/mail") })).await;
        let text = page.eval("document.body ? document.body.innerText : ''").await;
        let text = text.as_str().unwrap_or_default();
        if text.contains("Reset your password") && text.contains("Confirm your email address") {
            break;
        }
        assert!(Instant::now() < deadline, "the mails never showed: {text}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let links =
        page.eval("Array.from(document.querySelectorAll('article.mail a')).map(a => a.href).join(' ')").await;
    let links = links.as_str().unwrap_or_default().to_owned();
    assert!(links.contains(&format!("{base}/reset-password?token=mage_et_")), "{links}");
    assert!(links.contains(&format!("{base}/verify-email?token=mage_et_")), "{links}");

    let shot = page.call("Page.captureScreenshot", json!({ "format": "png" })).await;
    let png = base64::engine::general_purpose::STANDARD
        .decode(shot["result"]["data"].as_str().expect("screenshot data"))
        .expect("base64");
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dev-mail.png");
    std::fs::write(&path, &png).expect("write the screenshot");
    println!("screenshot: {}", path.display());
    drop(browser);
}
