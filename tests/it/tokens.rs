//! JSON Web Tokens on the running bridge: HS256, RS256 and ES256, a JWKS
//! served over HTTP that rotates without a restart, audience and leeway,
//! claims that narrow the filter, the token in a `Sec-WebSocket-Protocol`
//! offer, and a connection that ends (4001) when its token expires and
//! resumes with a fresh one without losing or repeating a record.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::common::*;
use kafka_ws_bridge::{Generator, SynthConfig};

const SECRET: &str = "0123456789abcdef0123456789abcdef";
const AUDIENCE: &str = "dashboards";
const RSA1: &[u8] = include_bytes!("../fixtures/jwt/rsa-1.key.pem");
const RSA2: &[u8] = include_bytes!("../fixtures/jwt/rsa-2.key.pem");
const EC1: &[u8] = include_bytes!("../fixtures/jwt/ec-1.key.pem");
const EC1_PUB: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/jwt/ec-1.pub.pem"
);

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

fn jwt(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: serde_json::Value) -> String {
    let mut h = Header::new(alg);
    h.kid = kid.map(str::to_string);
    encode(&h, &claims, key).expect("encode")
}

fn hs256(claims: serde_json::Value) -> String {
    jwt(
        Algorithm::HS256,
        None,
        &EncodingKey::from_secret(SECRET.as_bytes()),
        claims,
    )
}

fn jwks(keys: &[(&str, &EncodingKey, Algorithm)]) -> String {
    let keys: Vec<_> = keys
        .iter()
        .map(|(kid, k, alg)| {
            let mut jwk = Jwk::from_encoding_key(k, *alg).expect("jwk");
            jwk.common.key_id = Some(kid.to_string());
            jwk
        })
        .collect();
    json!({ "keys": keys }).to_string()
}

/// A JWKS endpoint on loopback serving whatever `doc` holds; counts fetches.
struct JwksServer {
    url: String,
    doc: Arc<Mutex<String>>,
    fetches: Arc<Mutex<u32>>,
}

impl JwksServer {
    async fn start(doc: String) -> JwksServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!(
            "http://{}/.well-known/jwks.json",
            listener.local_addr().expect("addr")
        );
        let doc = Arc::new(Mutex::new(doc));
        let fetches = Arc::new(Mutex::new(0));
        let (d, f) = (doc.clone(), fetches.clone());
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                *f.lock().unwrap() += 1;
                let body = d.lock().unwrap().clone();
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            }
        });
        JwksServer { url, doc, fetches }
    }
}

/// The handshake's status and, on 101, the subprotocol the server chose.
async fn handshake(url: &str, headers: &[(&str, String)]) -> (u16, Option<String>) {
    let mut req = url.into_client_request().expect("request");
    for (k, v) in headers {
        req.headers_mut().insert(
            tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes())
                .expect("name"),
            v.parse().expect("value"),
        );
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((_, resp)) => (
            101,
            resp.headers()
                .get("sec-websocket-protocol")
                .map(|v| v.to_str().unwrap_or_default().to_string()),
        ),
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => (r.status().as_u16(), None),
        Err(e) => panic!("{e}"),
    }
}

fn bearer(t: &str) -> Vec<(&'static str, String)> {
    vec![("authorization", format!("Bearer {t}"))]
}

/// What `GET /auth/token` answers for a token.
async fn token_check(port: u16, t: &str) -> (u16, serde_json::Value) {
    let auth = format!("Bearer {t}");
    let (code, body) = http_with(port, "GET", "/auth/token", &[("authorization", &auth)])
        .await
        .expect("GET /auth/token");
    (code, serde_json::from_str(&body).unwrap_or(json!(body)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hs256_rs256_and_es256_tokens_their_audience_leeway_claims_and_a_rotating_jwks() {
    let topic = unique("jwt");
    create_topic(&topic, 1).await;
    let (k1, k2) = (
        EncodingKey::from_rsa_pem(RSA1).expect("rsa1"),
        EncodingKey::from_rsa_pem(RSA2).expect("rsa2"),
    );
    let ec = EncodingKey::from_ec_pem(EC1).expect("ec");
    let server = JwksServer::start(jwks(&[("k1", &k1, Algorithm::RS256)])).await;
    let bridge = Bridge::start(
        &topic,
        &[
            ("WEBSOCKET_AUTH_HMAC_SECRET", SECRET),
            ("WEBSOCKET_JWT_JWKS", &server.url),
            ("WEBSOCKET_JWT_PUBLIC_KEY_FILE", EC1_PUB),
            ("WEBSOCKET_JWT_AUDIENCE", AUDIENCE),
            ("WEBSOCKET_JWT_LEEWAY_SECS", "20"),
        ],
    )
    .await;
    let url = bridge.ws_url("?format=json");
    let claims = |extra: serde_json::Value| {
        let mut c = json!({"exp": now() + 600, "aud": AUDIENCE});
        c.as_object_mut()
            .expect("object")
            .extend(extra.as_object().expect("object").clone());
        c
    };

    // One algorithm each: the secret, the JWKS key k1, the PEM EC key.
    let hs = hs256(claims(json!({"tenant": "tenant-1"})));
    let rs = jwt(Algorithm::RS256, Some("k1"), &k1, claims(json!({})));
    let es = jwt(Algorithm::ES256, None, &ec, claims(json!({})));
    for (name, t) in [("HS256", &hs), ("RS256", &rs), ("ES256", &es)] {
        assert_eq!(handshake(&url, &bearer(t)).await.0, 101, "{name}");
    }
    let (_, c) = token_check(bridge.port, &hs).await;
    assert_eq!(c["tenant"], "tenant-1");
    assert!(c["expires_at"].as_u64().is_some_and(|e| e >= now() + 600));

    // Audience, expiry and its leeway, forgery: each refused with its reason.
    let wrong_aud = hs256(json!({"exp": now() + 600, "aud": "billing"}));
    let no_aud = hs256(json!({"exp": now() + 600}));
    let late = hs256(json!({"exp": now() - 5, "aud": AUDIENCE}));
    let expired = hs256(json!({"exp": now() - 60, "aud": AUDIENCE}));
    let forged = jwt(Algorithm::RS256, Some("k1"), &k2, claims(json!({})));
    assert_eq!(handshake(&url, &bearer(&wrong_aud)).await.0, 401);
    assert_eq!(handshake(&url, &bearer(&expired)).await.0, 401);
    assert_eq!(handshake(&url, &bearer(&forged)).await.0, 401);
    assert_eq!(
        handshake(&url, &bearer(&late)).await.0,
        101,
        "5 s past exp is within the 20 s leeway"
    );
    for (t, reason) in [
        (&wrong_aud, "token audience is not accepted"),
        (&no_aud, "token lacks the required claim 'aud'"),
        (&expired, "token has expired"),
        (&forged, "token is not valid"),
    ] {
        let (code, body) = token_check(bridge.port, t).await;
        assert_eq!(
            (code, body["message"].as_str()),
            (401, Some(reason)),
            "{body}"
        );
    }

    // Claims narrow the filter; asking for more is refused.
    let narrow = hs256(claims(
        json!({"tenant": "tenant-1", "threads": ["thread-1"]}),
    ));
    let q = |query: &str| bridge.ws_url(&format!("?format=json{query}"));
    assert_eq!(
        handshake(&q("&threads=thread-2"), &bearer(&narrow)).await.0,
        403
    );
    assert_eq!(
        handshake(&q("&tenant=tenant-2"), &bearer(&narrow)).await.0,
        403
    );
    assert_eq!(
        handshake(&q("&threads=thread-1"), &bearer(&narrow)).await.0,
        101
    );
    let mut req = q("").into_client_request().expect("request");
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {narrow}").parse().expect("header"),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("connect");
    let hello = match next_frame(&mut ws, Duration::from_secs(5)).await {
        Some(Frame::Control(h)) => h,
        other => panic!("{other:?}"),
    };
    assert_eq!(hello["filters"]["tenant"], "tenant-1");
    assert_eq!(hello["filters"]["threads"], json!(["thread-1"]));

    // The token as a subprotocol offer (browsers): the server picks dashstream.v1.
    let offer = vec![(
        "sec-websocket-protocol",
        format!("dashstream.v1, dashstream.bearer.{rs}"),
    )];
    assert_eq!(
        handshake(&url, &offer).await,
        (101, Some("dashstream.v1".to_string()))
    );
    let bad_offer = vec![(
        "sec-websocket-protocol",
        format!("dashstream.v1, dashstream.bearer.{forged}"),
    )];
    assert_eq!(handshake(&url, &bad_offer).await.0, 401);

    // Rotation: k2 is not in the set yet; once the JWKS serves it, a token
    // naming it is accepted without a restart, and k1's are not any more.
    let rs2 = jwt(Algorithm::RS256, Some("k2"), &k2, claims(json!({})));
    let (code, body) = token_check(bridge.port, &rs2).await;
    assert_eq!(code, 401, "{body}");
    assert_eq!(
        body["message"],
        "token is signed with an unknown key id 'k2'"
    );
    *server.doc.lock().unwrap() = jwks(&[("k2", &k2, Algorithm::RS256)]);
    let before = *server.fetches.lock().unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        handshake(&url, &bearer(&rs2)).await.0,
        101,
        "new kid picked up"
    );
    assert_eq!(handshake(&url, &bearer(&rs)).await.0, 401, "k1 retired");
    let fetched = *server.fetches.lock().unwrap() - before;
    assert!(
        (1..=2).contains(&fetched),
        "an unknown kid refreshes the JWKS at most once a second: {fetched} fetches"
    );
    // A burst of tokens naming unknown key ids costs at most one fetch a second.
    let before = *server.fetches.lock().unwrap();
    for i in 0..20 {
        let t = jwt(
            Algorithm::RS256,
            Some(&format!("nope-{i}")),
            &k2,
            claims(json!({})),
        );
        assert_eq!(handshake(&url, &bearer(&t)).await.0, 401);
    }
    let fetched = *server.fetches.lock().unwrap() - before;
    assert!(fetched <= 3, "{fetched} JWKS fetches for 20 unknown kids");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_connection_ends_when_its_token_expires_and_resumes_with_a_fresh_one_without_loss() {
    let topic = unique("jwt-exp");
    create_topic(&topic, 2).await;
    let bridge = Bridge::start(
        &topic,
        &[
            ("WEBSOCKET_AUTH_HMAC_SECRET", SECRET),
            ("WEBSOCKET_JWT_LEEWAY_SECS", "1"),
        ],
    )
    .await;
    let total = 600usize;
    let recs: Vec<_> = Generator::new(SynthConfig {
        threads: 4,
        ..Default::default()
    })
    .take(total)
    .map(|r| (Some(r.key), r.value))
    .collect();
    let producing = {
        let topic = topic.clone();
        tokio::spawn(async move {
            let p = producer();
            for chunk in recs.chunks(30) {
                produce(&p, &topic, chunk).await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    // Tokens valid for 2 s (+1 s leeway): a client keeps a cursor, and on
    // 4001 connects again with a fresh token and resumes from it.
    let mut seen: BTreeMap<(i32, i64), u32> = BTreeMap::new();
    let mut cursor: BTreeMap<i32, i64> = BTreeMap::new();
    let mut expiries = 0;
    let started = std::time::Instant::now();
    while seen.len() < total && started.elapsed() < Duration::from_secs(60) {
        let t = hs256(json!({"exp": now() + 2}));
        let query = if cursor.is_empty() {
            "?format=json&resume=earliest".to_string()
        } else {
            let offs: Vec<String> = cursor.iter().map(|(p, o)| format!("{p}:{o}")).collect();
            format!("?format=json&resume=cursor&last_offsets={}", offs.join(","))
        };
        let (mut ws, _) = connect(&bridge.ws_url(&format!("{query}&token={t}"))).await;
        let opened = std::time::Instant::now();
        loop {
            match next_frame(&mut ws, Duration::from_secs(10)).await {
                Some(Frame::Data {
                    partition, offset, ..
                }) => {
                    *seen.entry((partition, offset)).or_default() += 1;
                    cursor.insert(partition, offset);
                }
                Some(Frame::Control(_)) => {}
                Some(Frame::Closed { code, reason }) => {
                    assert_eq!((code, reason.as_str()), (4001, "token expired"));
                    let lived = opened.elapsed();
                    assert!(
                        lived >= Duration::from_millis(1500) && lived < Duration::from_secs(6),
                        "closed after {lived:?} for a token of 2 s + 1 s leeway"
                    );
                    expiries += 1;
                    break;
                }
                None => break,
            }
        }
    }
    producing.await.expect("producer");
    assert!(expiries >= 2, "{expiries} expiries");
    assert_eq!(seen.len(), total, "every record once");
    let repeated: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(repeated.is_empty(), "repeated across resumes: {repeated:?}");
    let m = bridge.metrics().await;
    assert_eq!(
        m["websocket_token_expired_disconnects_total"],
        expiries as f64
    );
}
