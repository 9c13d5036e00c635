//! JSON Web Tokens (RFC 7519) for `/ws`: HS256 with the shared secret,
//! RS256 and ES256 with a public key file (PEM) or a JWKS (RFC 7517) read from
//! a file or a URL, refreshed periodically and when a token names a key id
//! the set does not hold.
//!
//! Every token must carry `exp`; `nbf`, `iss` and `aud` are checked when
//! present (`iss` and `aud` are required when configured), all with the
//! configured leeway. Only HS256, RS256 and ES256 are accepted, and each
//! only with a key of its own kind (no algorithm confusion: an RS256 public
//! key is never used as an HS256 secret). The tenant and thread-list claims
//! (names configurable) become [`Claims`], which narrow the filter.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use parking_lot::RwLock;

use crate::http::claims::{AuthError, Claims};

/// Largest JWKS document read, in bytes.
const MAX_JWKS_BYTES: usize = 1 << 20;
/// Most keys kept from one JWKS.
const MAX_JWKS_KEYS: usize = 64;
/// Most thread ids one token may grant.
const MAX_THREADS_CLAIM: usize = 1024;
/// A token with an unknown key id refreshes the JWKS at most this often.
pub(crate) const UNKNOWN_KID_REFRESH: Duration = Duration::from_secs(1);
/// One JWKS fetch takes at most this long.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a JWKS comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum JwksSource {
    File(PathBuf),
    Url(String),
}

impl JwksSource {
    pub(crate) fn parse(s: &str) -> Self {
        if s.starts_with("http://") || s.starts_with("https://") {
            JwksSource::Url(s.to_string())
        } else {
            JwksSource::File(PathBuf::from(s))
        }
    }
}

/// The validated JWT settings.
#[derive(Clone, Debug)]
pub(crate) struct JwtSettings {
    pub(crate) hs256_secret: Option<Vec<u8>>,
    pub(crate) public_key_pem: Option<Vec<u8>>,
    pub(crate) jwks: Option<JwksSource>,
    pub(crate) jwks_refresh: Duration,
    pub(crate) issuers: Vec<String>,
    pub(crate) audiences: Vec<String>,
    pub(crate) leeway_secs: u64,
    pub(crate) tenant_claim: String,
    pub(crate) threads_claim: String,
}

/// A verification key and the one algorithm it is used with.
#[derive(Clone)]
struct Key {
    key: DecodingKey,
    alg: Algorithm,
}

/// The keys tokens are checked against; the JWKS part is replaced on refresh.
#[derive(Default)]
struct Keys {
    secret: Option<Key>,
    pem: Option<Key>,
    /// By key id.
    jwks: HashMap<String, Key>,
    /// JWKS keys without a `kid`.
    jwks_anonymous: Vec<Key>,
    /// Whether a JWKS was ever loaded (a URL may be down at start).
    jwks_loaded: bool,
}

/// Verifies tokens; shared by every upgrade.
pub(crate) struct Jwt {
    settings: JwtSettings,
    keys: RwLock<Keys>,
    /// Single-flight JWKS refresh; holds when the last one ran.
    refreshing: tokio::sync::Mutex<Option<Instant>>,
    /// For a JWKS URL only.
    client: Option<reqwest::Client>,
}

impl std::fmt::Debug for Jwt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwt")
            .field("jwks", &self.settings.jwks)
            .finish_non_exhaustive()
    }
}

/// A PEM public key: RSA → RS256, EC P-256 → ES256.
pub(crate) fn pem_key(pem: &[u8]) -> Result<(DecodingKey, Algorithm), String> {
    if let Ok(k) = DecodingKey::from_rsa_pem(pem) {
        return Ok((k, Algorithm::RS256));
    }
    if let Ok(k) = DecodingKey::from_ec_pem(pem) {
        return Ok((k, Algorithm::ES256));
    }
    Err("not a PEM RSA or EC (P-256) public key".into())
}

/// The keys of a JWKS document usable for signatures (RS256, ES256), by
/// key id; others are skipped. Errors only when the document is not a JWKS.
fn parse_jwks(body: &[u8]) -> Result<(HashMap<String, Key>, Vec<Key>), String> {
    if body.len() > MAX_JWKS_BYTES {
        return Err(format!("JWKS is larger than {MAX_JWKS_BYTES} bytes"));
    }
    #[derive(serde::Deserialize)]
    struct Doc {
        keys: Vec<serde_json::Value>,
    }
    let doc: Doc = serde_json::from_slice(body).map_err(|e| format!("not a JWKS: {e}"))?;
    let mut by_kid = HashMap::new();
    let mut anonymous = Vec::new();
    for v in doc.keys.into_iter().take(MAX_JWKS_KEYS) {
        let Ok(jwk) = serde_json::from_value::<Jwk>(v) else {
            continue;
        };
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            continue;
        }
        let alg = match (&jwk.algorithm, jwk.common.key_algorithm) {
            (AlgorithmParameters::RSA(_), None | Some(KeyAlgorithm::RS256)) => Algorithm::RS256,
            (AlgorithmParameters::EllipticCurve(ec), None | Some(KeyAlgorithm::ES256))
                if ec.curve == EllipticCurve::P256 =>
            {
                Algorithm::ES256
            }
            _ => continue,
        };
        let Ok(key) = DecodingKey::from_jwk(&jwk) else {
            continue;
        };
        let key = Key { key, alg };
        match jwk.common.key_id {
            Some(kid) => {
                by_kid.insert(kid, key);
            }
            None => anonymous.push(key),
        }
    }
    Ok((by_kid, anonymous))
}

impl Jwt {
    /// Reads the keys. A public key file or a JWKS file that cannot be read
    /// is a start-up error naming its variable; a JWKS URL is fetched by
    /// [`Jwt::refresh_loop`] (tokens that need it are refused until then).
    pub(crate) fn new(settings: JwtSettings) -> Result<Arc<Jwt>, (&'static str, String)> {
        let mut keys = Keys::default();
        if let Some(s) = &settings.hs256_secret {
            keys.secret = Some(Key {
                key: DecodingKey::from_secret(s),
                alg: Algorithm::HS256,
            });
        }
        if let Some(pem) = &settings.public_key_pem {
            let (key, alg) = pem_key(pem).map_err(|e| ("WEBSOCKET_JWT_PUBLIC_KEY_FILE", e))?;
            keys.pem = Some(Key { key, alg });
        }
        let client = match &settings.jwks {
            Some(JwksSource::Url(_)) => Some(
                reqwest::Client::builder()
                    .timeout(FETCH_TIMEOUT)
                    .build()
                    .map_err(|e| ("WEBSOCKET_JWT_JWKS", e.to_string()))?,
            ),
            _ => None,
        };
        let jwt = Arc::new(Jwt {
            settings,
            keys: RwLock::new(keys),
            refreshing: tokio::sync::Mutex::new(None),
            client,
        });
        match &jwt.settings.jwks {
            Some(JwksSource::File(p)) => {
                let (by_kid, anon) = std::fs::read(p)
                    .map_err(|e| format!("{}: {e}", p.display()))
                    .and_then(|b| parse_jwks(&b))
                    .map_err(|e| ("WEBSOCKET_JWT_JWKS", e))?;
                jwt.install(by_kid, anon);
            }
            Some(JwksSource::Url(_)) | None => {}
        }
        Ok(jwt)
    }

    fn install(&self, by_kid: HashMap<String, Key>, anonymous: Vec<Key>) {
        let n = by_kid.len() + anonymous.len();
        let mut k = self.keys.write();
        k.jwks = by_kid;
        k.jwks_anonymous = anonymous;
        k.jwks_loaded = true;
        drop(k);
        tracing::info!(keys = n, "JWKS loaded");
    }

    async fn fetch(&self) -> Result<Vec<u8>, String> {
        match &self.settings.jwks {
            None => Err("no JWKS configured".into()),
            Some(JwksSource::File(p)) => tokio::fs::read(p)
                .await
                .map_err(|e| format!("{}: {e}", p.display())),
            Some(JwksSource::Url(u)) => {
                let client = self.client.as_ref().ok_or("no HTTP client")?;
                let mut resp = client
                    .get(u)
                    .send()
                    .await
                    .and_then(|r| r.error_for_status())
                    .map_err(|e| e.to_string())?;
                let mut body = Vec::new();
                while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
                    if body.len() + chunk.len() > MAX_JWKS_BYTES {
                        return Err(format!("JWKS is larger than {MAX_JWKS_BYTES} bytes"));
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(body)
            }
        }
    }

    /// Reads the JWKS again and installs it. A failed read keeps the keys
    /// there were.
    pub(crate) async fn refresh(&self) -> Result<(), String> {
        self.refresh_unless_recent(None).await
    }

    /// [`Jwt::refresh`], unless one started less than `min` ago. Refreshes
    /// run one at a time: a burst of tokens with unknown key ids costs one.
    async fn refresh_unless_recent(&self, min: Option<Duration>) -> Result<(), String> {
        let mut last = self.refreshing.lock().await;
        if let (Some(min), Some(t)) = (min, *last) {
            if t.elapsed() < min {
                return Ok(());
            }
        }
        *last = Some(Instant::now());
        let (by_kid, anon) = parse_jwks(&self.fetch().await?)?;
        self.install(by_kid, anon);
        Ok(())
    }

    /// Fetches a JWKS URL at once, then refreshes the JWKS every
    /// `WEBSOCKET_JWT_JWKS_REFRESH_SECS` (every 10 s while it has never
    /// loaded), until `stop`.
    pub(crate) async fn refresh_loop(self: Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        if self.settings.jwks.is_none() {
            return;
        }
        if !self.keys.read().jwks_loaded {
            if let Err(e) = self.refresh().await {
                metrics::counter!(crate::telemetry::INFRA_ERRORS, "kind" => "jwks").increment(1);
                tracing::warn!(error = %e, "JWKS could not be fetched at start: tokens signed with its keys are refused until it is (retried every 10 s)");
            }
        }
        loop {
            let every = if self.keys.read().jwks_loaded {
                self.settings.jwks_refresh
            } else {
                Duration::from_secs(10)
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            if let Err(e) = self.refresh().await {
                metrics::counter!(crate::telemetry::INFRA_ERRORS, "kind" => "jwks").increment(1);
                tracing::warn!(error = %e, "JWKS refresh failed: the keys loaded before stay in use");
            }
        }
    }

    /// Verifies a token; a key id the JWKS does not hold refreshes it (at
    /// most once per [`UNKNOWN_KID_REFRESH`]) and tries again.
    pub(crate) async fn verify_refreshing(&self, token: &str) -> Result<Claims, AuthError> {
        match self.verify(token) {
            Err(AuthError::UnknownKey(kid)) if self.settings.jwks.is_some() => {
                if let Err(e) = self.refresh_unless_recent(Some(UNKNOWN_KID_REFRESH)).await {
                    tracing::warn!(error = %e, kid = %kid, "JWKS refresh for an unknown key id failed");
                }
                self.verify(token)
            }
            r => r,
        }
    }

    /// Verifies a token with the keys loaded now.
    pub(crate) fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Invalid)?;
        let key = self.key_for(header.alg, header.kid.as_deref())?;
        let s = &self.settings;
        let mut v = Validation::new(key.alg);
        v.leeway = s.leeway_secs;
        v.validate_nbf = true;
        let mut required = vec!["exp"];
        if s.audiences.is_empty() {
            v.validate_aud = false;
        } else {
            v.set_audience(&s.audiences);
            required.push("aud");
        }
        if !s.issuers.is_empty() {
            v.set_issuer(&s.issuers);
            required.push("iss");
        }
        v.set_required_spec_claims(&required);
        let data =
            jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(token, &key.key, &v)
                .map_err(|e| match e.kind() {
                    ErrorKind::ExpiredSignature => AuthError::Expired,
                    ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                    ErrorKind::InvalidAudience => AuthError::Audience,
                    ErrorKind::InvalidIssuer => AuthError::Issuer,
                    ErrorKind::MissingRequiredClaim(c) => AuthError::MissingClaim(c.clone()),
                    _ => AuthError::Invalid,
                })?;
        self.claims(&data.claims)
    }

    fn key_for(&self, alg: Algorithm, kid: Option<&str>) -> Result<Key, AuthError> {
        let keys = self.keys.read();
        let fits = |k: &&Key| k.alg == alg;
        let found = match alg {
            Algorithm::HS256 => keys.secret.as_ref().filter(fits),
            Algorithm::RS256 | Algorithm::ES256 => match kid {
                Some(kid) if self.settings.jwks.is_some() => match keys.jwks.get(kid) {
                    Some(k) => Some(k).filter(fits),
                    // A PEM key has no id: a token naming one may still fit it.
                    None => match keys.pem.as_ref().filter(fits) {
                        Some(k) => Some(k),
                        None => return Err(AuthError::UnknownKey(kid.chars().take(64).collect())),
                    },
                },
                _ => keys.pem.as_ref().filter(fits).or_else(|| {
                    let mut anon = keys.jwks_anonymous.iter().filter(fits);
                    match (anon.next(), anon.next()) {
                        (Some(k), None) => Some(k),
                        _ => None,
                    }
                }),
            },
            _ => None,
        };
        found
            .cloned()
            .ok_or(AuthError::Algorithm(format!("{alg:?}")))
    }

    fn claims(&self, c: &serde_json::Map<String, serde_json::Value>) -> Result<Claims, AuthError> {
        use serde_json::Value;
        let bad = |name: &str, what: &str| AuthError::BadClaim(format!("'{name}' must be {what}"));
        let s = &self.settings;
        let tenant = match c.get(&s.tenant_claim) {
            None | Some(Value::Null) => None,
            Some(Value::String(t)) => Some(t.clone()),
            Some(_) => return Err(bad(&s.tenant_claim, "a string")),
        };
        let threads = match c.get(&s.threads_claim) {
            None | Some(Value::Null) => None,
            Some(Value::Array(a)) if a.len() <= MAX_THREADS_CLAIM => Some(
                a.iter()
                    .map(|t| t.as_str().map(str::to_string))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| bad(&s.threads_claim, "an array of strings"))?,
            ),
            Some(_) => return Err(bad(&s.threads_claim, "an array of at most 1024 strings")),
        };
        let exp = c.get("exp").and_then(Value::as_u64);
        Ok(Claims {
            tenant,
            threads,
            expires_at: exp.map(|e| e.saturating_add(s.leeway_secs)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    const SECRET: &[u8] = b"an-hs256-secret-of-32-characters!!";
    const RSA1: &[u8] = include_bytes!("../../tests/fixtures/jwt/rsa-1.key.pem");
    const RSA1_PUB: &[u8] = include_bytes!("../../tests/fixtures/jwt/rsa-1.pub.pem");
    const RSA2: &[u8] = include_bytes!("../../tests/fixtures/jwt/rsa-2.key.pem");
    const EC1: &[u8] = include_bytes!("../../tests/fixtures/jwt/ec-1.key.pem");
    const EC1_PUB: &[u8] = include_bytes!("../../tests/fixtures/jwt/ec-1.pub.pem");

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    fn settings() -> JwtSettings {
        JwtSettings {
            hs256_secret: None,
            public_key_pem: None,
            jwks: None,
            jwks_refresh: Duration::from_secs(300),
            issuers: vec![],
            audiences: vec![],
            leeway_secs: 0,
            tenant_claim: "tenant".into(),
            threads_claim: "threads".into(),
        }
    }

    fn token(
        alg: Algorithm,
        kid: Option<&str>,
        key: &EncodingKey,
        claims: serde_json::Value,
    ) -> String {
        let mut h = Header::new(alg);
        h.kid = kid.map(str::to_string);
        encode(&h, &claims, key).unwrap()
    }

    fn hs(claims: serde_json::Value) -> String {
        token(
            Algorithm::HS256,
            None,
            &EncodingKey::from_secret(SECRET),
            claims,
        )
    }

    fn rsa(pem: &[u8]) -> EncodingKey {
        EncodingKey::from_rsa_pem(pem).unwrap()
    }

    fn jwks(keys: &[(&str, &EncodingKey, Algorithm)]) -> String {
        let keys: Vec<_> = keys
            .iter()
            .map(|(kid, k, alg)| {
                let mut jwk = Jwk::from_encoding_key(k, *alg).unwrap();
                jwk.common.key_id = Some(kid.to_string());
                jwk
            })
            .collect();
        serde_json::to_string(&json!({ "keys": keys })).unwrap()
    }

    #[test]
    fn hs256_tokens_carry_their_claims_and_expiry() {
        let jwt = Jwt::new(JwtSettings {
            hs256_secret: Some(SECRET.to_vec()),
            leeway_secs: 7,
            ..settings()
        })
        .unwrap();
        let exp = now() + 60;
        let c = jwt
            .verify(&hs(
                json!({"exp": exp, "tenant": "acme", "threads": ["a", "b"]}),
            ))
            .unwrap();
        assert_eq!(c.tenant.as_deref(), Some("acme"));
        assert_eq!(c.threads, Some(vec!["a".to_string(), "b".to_string()]));
        assert_eq!(c.expires_at, Some(exp + 7), "exp plus the leeway");
        let forged = token(
            Algorithm::HS256,
            None,
            &EncodingKey::from_secret(b"another-secret-of-32-characters!!!"),
            json!({"exp": exp}),
        );
        assert_eq!(jwt.verify(&forged), Err(AuthError::Invalid));
        assert_eq!(
            jwt.verify(&hs(json!({"tenant": "acme"}))),
            Err(AuthError::MissingClaim("exp".into())),
            "a token without exp would never end"
        );
    }

    #[test]
    fn leeway_applies_to_exp_and_nbf() {
        let jwt = Jwt::new(JwtSettings {
            hs256_secret: Some(SECRET.to_vec()),
            leeway_secs: 30,
            ..settings()
        })
        .unwrap();
        assert!(
            jwt.verify(&hs(json!({"exp": now() - 10}))).is_ok(),
            "10 s late, within 30 s"
        );
        assert_eq!(
            jwt.verify(&hs(json!({"exp": now() - 60}))),
            Err(AuthError::Expired)
        );
        assert!(jwt
            .verify(&hs(json!({"exp": now() + 60, "nbf": now() + 10})))
            .is_ok());
        assert_eq!(
            jwt.verify(&hs(json!({"exp": now() + 600, "nbf": now() + 120}))),
            Err(AuthError::NotYetValid)
        );
    }

    #[test]
    fn audience_and_issuer_are_required_when_configured() {
        let jwt = Jwt::new(JwtSettings {
            hs256_secret: Some(SECRET.to_vec()),
            audiences: vec!["dashboards".into()],
            issuers: vec!["https://idp.example".into()],
            ..settings()
        })
        .unwrap();
        let exp = now() + 60;
        let ok = json!({"exp": exp, "aud": "dashboards", "iss": "https://idp.example"});
        assert!(jwt.verify(&hs(ok)).is_ok());
        assert_eq!(
            jwt.verify(&hs(
                json!({"exp": exp, "aud": "billing", "iss": "https://idp.example"})
            )),
            Err(AuthError::Audience)
        );
        assert_eq!(
            jwt.verify(&hs(
                json!({"exp": exp, "aud": ["x", "dashboards"], "iss": "https://evil.example"})
            )),
            Err(AuthError::Issuer)
        );
        assert_eq!(
            jwt.verify(&hs(json!({"exp": exp, "iss": "https://idp.example"}))),
            Err(AuthError::MissingClaim("aud".into()))
        );
    }

    #[test]
    fn rs256_and_es256_with_public_key_files() {
        let rs = Jwt::new(JwtSettings {
            public_key_pem: Some(RSA1_PUB.to_vec()),
            ..settings()
        })
        .unwrap();
        let es = Jwt::new(JwtSettings {
            public_key_pem: Some(EC1_PUB.to_vec()),
            ..settings()
        })
        .unwrap();
        let claims = json!({"exp": now() + 60, "tenant": "t"});
        let rs_token = token(Algorithm::RS256, None, &rsa(RSA1), claims.clone());
        let es_token = token(
            Algorithm::ES256,
            Some("any"),
            &EncodingKey::from_ec_pem(EC1).unwrap(),
            claims.clone(),
        );
        assert_eq!(rs.verify(&rs_token).unwrap().tenant.as_deref(), Some("t"));
        assert_eq!(es.verify(&es_token).unwrap().tenant.as_deref(), Some("t"));
        assert!(matches!(rs.verify(&es_token), Err(AuthError::Algorithm(_))));
        assert_eq!(
            rs.verify(&token(Algorithm::RS256, None, &rsa(RSA2), claims)),
            Err(AuthError::Invalid),
            "signed by another key"
        );
    }

    #[test]
    fn no_algorithm_confusion() {
        // An HS256 token "signed" with the public key as a secret must not pass.
        let rs = Jwt::new(JwtSettings {
            public_key_pem: Some(RSA1_PUB.to_vec()),
            ..settings()
        })
        .unwrap();
        let t = token(
            Algorithm::HS256,
            None,
            &EncodingKey::from_secret(RSA1_PUB),
            json!({"exp": now() + 60}),
        );
        assert!(matches!(rs.verify(&t), Err(AuthError::Algorithm(_))));
        // alg "none" and unsigned tokens.
        let b64 = |v: serde_json::Value| {
            use base64::Engine as _;
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        let none = format!(
            "{}.{}.",
            b64(json!({"alg": "none", "typ": "JWT"})),
            b64(json!({"exp": now() + 60}))
        );
        assert_eq!(rs.verify(&none), Err(AuthError::Invalid));
        let hs_only = Jwt::new(JwtSettings {
            hs256_secret: Some(SECRET.to_vec()),
            ..settings()
        })
        .unwrap();
        let rs_token = token(
            Algorithm::RS256,
            None,
            &rsa(RSA1),
            json!({"exp": now() + 60}),
        );
        assert!(matches!(
            hs_only.verify(&rs_token),
            Err(AuthError::Algorithm(_))
        ));
    }

    #[test]
    fn claim_names_are_configurable_and_types_checked() {
        let jwt = Jwt::new(JwtSettings {
            hs256_secret: Some(SECRET.to_vec()),
            tenant_claim: "org".into(),
            threads_claim: "https://dash.example/threads".into(),
            ..settings()
        })
        .unwrap();
        let exp = now() + 60;
        let c = jwt
            .verify(&hs(json!({"exp": exp, "org": "acme", "https://dash.example/threads": ["x"], "tenant": "ignored"})))
            .unwrap();
        assert_eq!(c.tenant.as_deref(), Some("acme"));
        assert_eq!(c.threads, Some(vec!["x".to_string()]));
        assert!(matches!(
            jwt.verify(&hs(json!({"exp": exp, "org": 5}))),
            Err(AuthError::BadClaim(_))
        ));
        assert!(matches!(
            jwt.verify(&hs(
                json!({"exp": exp, "https://dash.example/threads": "x"})
            )),
            Err(AuthError::BadClaim(_))
        ));
    }

    #[tokio::test]
    async fn a_jwks_file_rotation_is_picked_up_on_an_unknown_key_id() {
        let dir = std::env::temp_dir().join(format!("kwb-jwks-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("jwks.json");
        let (k1, k2) = (rsa(RSA1), rsa(RSA2));
        let ec = EncodingKey::from_ec_pem(EC1).unwrap();
        std::fs::write(
            &path,
            jwks(&[("k1", &k1, Algorithm::RS256), ("e1", &ec, Algorithm::ES256)]),
        )
        .unwrap();
        let jwt = Jwt::new(JwtSettings {
            jwks: Some(JwksSource::File(path.clone())),
            ..settings()
        })
        .unwrap();
        let claims = json!({"exp": now() + 60});
        let t1 = token(Algorithm::RS256, Some("k1"), &k1, claims.clone());
        let t2 = token(Algorithm::RS256, Some("k2"), &k2, claims.clone());
        let te = token(Algorithm::ES256, Some("e1"), &ec, claims.clone());
        assert!(jwt.verify_refreshing(&t1).await.is_ok());
        assert!(jwt.verify_refreshing(&te).await.is_ok());
        assert_eq!(
            jwt.verify_refreshing(&t2).await,
            Err(AuthError::UnknownKey("k2".into()))
        );
        // The key set rotates: k2 in, k1 out. A token naming k2 refreshes it.
        std::fs::write(&path, jwks(&[("k2", &k2, Algorithm::RS256)])).unwrap();
        tokio::time::sleep(UNKNOWN_KID_REFRESH).await;
        assert!(
            jwt.verify_refreshing(&t2).await.is_ok(),
            "picked up without a restart"
        );
        assert_eq!(
            jwt.verify(&t1),
            Err(AuthError::UnknownKey("k1".into())),
            "k1 retired"
        );
        // A key id that is not in the set, whose signature fits another key: refused.
        let forged = token(Algorithm::RS256, Some("k2"), &k1, claims);
        assert_eq!(jwt.verify(&forged), Err(AuthError::Invalid));
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn jwks_documents_are_bounded_and_skip_keys_they_cannot_use() {
        assert!(parse_jwks(b"{}").is_err());
        assert!(parse_jwks(&vec![b' '; MAX_JWKS_BYTES + 1]).is_err());
        let doc = json!({"keys": [
            {"kty": "oct", "k": "c2VjcmV0", "kid": "sym"},
            {"kty": "RSA", "use": "enc", "kid": "enc", "n": "AQAB", "e": "AQAB"},
            {"kty": "nonsense"},
        ]});
        let (by_kid, anon) = parse_jwks(doc.to_string().as_bytes()).unwrap();
        assert!(
            by_kid.is_empty() && anon.is_empty(),
            "a symmetric key in a JWKS is never trusted"
        );
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_tokens_never_panic(t in "[A-Za-z0-9_.-]{0,400}") {
            let jwt = Jwt::new(JwtSettings { hs256_secret: Some(SECRET.to_vec()), public_key_pem: Some(EC1_PUB.to_vec()), ..settings() }).unwrap();
            let _ = jwt.verify(&t);
        }
    }
}
