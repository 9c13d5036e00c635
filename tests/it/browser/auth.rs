//! The live page against a bridge that requires JWTs, in headless Chromium: it asks for a token, shows
//! the bridge's refusal of an expired one and of one for another audience, connects with a valid
//! ES256 token (never putting it in the URL) and draws its charts; then, with a site's token provider,
//! it reconnects with a fresh token each time one expires mid-stream and loses nothing (offsets).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::json;

use super::*;

const SECRET: &str = "browser-secret-0123456789abcdef0123";
const AUDIENCE: &str = "dashboards";
const EC1: &[u8] = include_bytes!("../../fixtures/jwt/ec-1.key.pem");
const EC1_PUB: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/jwt/ec-1.pub.pem"
);

fn es256(exp_in: i64, aud: &str) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    encode(
        &Header::new(Algorithm::ES256),
        &json!({"exp": now + exp_in, "aud": aud, "sub": "operator"}),
        &EncodingKey::from_ec_pem(EC1).expect("ec key"),
    )
    .expect("encode")
}

/// A site's token provider, as an SSO integration would define it: mints HS256 tokens of 3 s in the
/// page (WebCrypto) and counts them.
fn provider_script() -> String {
    format!(
        r#"window.__minted = 0;
window.dashstreamTokenProvider = async () => {{
  const enc = new TextEncoder();
  const b64 = (bytes) => btoa(String.fromCharCode(...new Uint8Array(bytes))).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
  const part = (obj) => b64(enc.encode(JSON.stringify(obj)));
  const body = part({{ alg: 'HS256', typ: 'JWT' }}) + '.' + part({{ exp: Math.floor(Date.now() / 1000) + 3, aud: '{AUDIENCE}' }});
  const key = await crypto.subtle.importKey('raw', enc.encode('{SECRET}'), {{ name: 'HMAC', hash: 'SHA-256' }}, false, ['sign']);
  const sig = await crypto.subtle.sign('HMAC', key, enc.encode(body));
  window.__minted += 1;
  return body + '.' + b64(sig);
}};"#
    )
}

/// Types a token into the login form and submits it.
fn login_expr(token: &str) -> String {
    format!(
        "(() => {{ document.getElementById('login-token').value = '{token}'; \
         document.getElementById('login-form').requestSubmit(); return true; }})()"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_page_logs_in_with_a_jwt_and_reconnects_with_fresh_tokens_when_they_expire() {
    let chromium = chromium();
    require_node_and_playwright();
    let topic = unique("browser-auth");
    create_topic(&topic, 3).await;
    let port = free_port();
    let bridge = bridge_on(
        &topic,
        &unique("grp"),
        port,
        &[
            ("WEBSOCKET_AUTH_HMAC_SECRET", SECRET),
            ("WEBSOCKET_JWT_PUBLIC_KEY_FILE", EC1_PUB),
            ("WEBSOCKET_JWT_AUDIENCE", AUDIENCE),
            ("WEBSOCKET_JWT_LEEWAY_SECS", "0"),
        ],
    )
    .await;
    let gen = Generator::new(SynthConfig {
        threads: THREADS,
        ..Default::default()
    });
    let producing = produce_steadily(&topic, gen, BTreeMap::new());

    let artifacts = artifacts_dir();
    let log = artifacts.join("page-auth-console.log");
    let mut d = Driver::start(log.clone());
    d.try_call(
        "launch",
        json!({"chromium": chromium, "log": log}),
        Duration::from_secs(30),
    )
    .await
    .unwrap_or_else(|e| panic!("launching Chromium through playwright-core: {e}"));
    let base = format!("http://127.0.0.1:{port}");
    d.try_call(
        "goto",
        json!({"url": format!("{base}/")}),
        Duration::from_secs(15),
    )
    .await
    .expect("open the page");

    // (a) The page asks for a token and shows why the bridge refuses one.
    d.wait(
        "the login prompt",
        "(() => { const d = window.__dashstream; return d && d.auth.required && d.auth.state === 'login' \
         && !document.getElementById('login').hidden; })()",
        Duration::from_secs(10),
    )
    .await;
    for (token, refusal) in [
        (es256(-60, AUDIENCE), "token has expired"),
        (es256(3600, "billing"), "token audience is not accepted"),
    ] {
        d.eval(&login_expr(&token)).await;
        d.wait(
            refusal,
            &format!("document.getElementById('login-error').textContent === '{refusal}'"),
            Duration::from_secs(10),
        )
        .await;
    }
    let urls = d.eval("window.__dashstream.connectUrls").await;
    assert_eq!(urls, json!([]), "no connection with a refused token");

    // (b) A valid ES256 token: live data, the token never in a URL, the charts drawn.
    d.eval(&login_expr(&es256(3600, AUDIENCE))).await;
    d.wait(
        "live after the login",
        "(() => { const d = window.__dashstream; return d.status === 'live' && d.appliedCount > 200 \
         && document.getElementById('login').hidden; })()",
        Duration::from_secs(20),
    )
    .await;
    let stored = d
        .eval("[sessionStorage.getItem('dashstream.token') !== null, location.href, window.__dashstream.connectUrls]")
        .await;
    assert_eq!(stored[0], true, "the token is kept in sessionStorage");
    assert!(!stored.to_string().contains("token="), "{stored}");
    let charts = d
        .wait(
            "every chart drawn",
            "(() => { const c = window.__dashstream.charts; const all = Object.values(c); \
             return all.length === 7 && all.every((x) => x.segments >= 3 && x.inked > 500) ? c : false; })()",
            Duration::from_secs(30),
        )
        .await;
    let shot = artifacts.join("page-auth.png");
    d.try_call("screenshot", json!({"path": shot}), Duration::from_secs(15))
        .await
        .expect("screenshot");
    println!("[browser] charts {charts}; screenshot {}", shot.display());

    // (c) A site's token provider: tokens of 3 s. Each expiry closes the connection (4001); the page
    // reconnects with a fresh token and resumes from its cursor.
    d.try_call(
        "new_page",
        json!({"init_script": provider_script()}),
        Duration::from_secs(15),
    )
    .await
    .expect("new page");
    d.try_call(
        "goto",
        json!({"url": format!("{base}/?backoff_max_ms=1000")}),
        Duration::from_secs(15),
    )
    .await
    .expect("open the page");
    d.wait(
        "two token expiries",
        "(() => { const d = window.__dashstream; return d && d.auth.expiries >= 2 && d.status === 'live' \
         && d.auth.state === 'ok'; })()",
        Duration::from_secs(30),
    )
    .await;
    let (_, last) = producing.finish().await;
    d.wait(
        "caught up after the expiries",
        &caught_up_expr(&last),
        Duration::from_secs(30),
    )
    .await;
    let n = assert_exactly_once(&mut d, &last, "across token expiries").await;
    let produced: u64 = last.values().sum();
    assert_eq!(n as u64, produced, "every produced record applied once");
    let s = d
        .eval("({ minted: window.__minted, auth: window.__dashstream.auth, gaps: window.__dashstream.gaps, login: !document.getElementById('login').hidden })")
        .await;
    assert!(s["minted"].as_u64().unwrap_or(0) >= 3, "{s}");
    assert_eq!(s["gaps"], json!([]), "{s}");
    assert_eq!(
        s["login"], false,
        "a provider is never replaced by the prompt: {s}"
    );
    let m = bridge.metrics().await;
    assert!(m["websocket_token_expired_disconnects_total"] >= 2.0);
    let _ = d
        .try_call("close", json!({}), Duration::from_secs(10))
        .await;
}
