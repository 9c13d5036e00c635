//! Who may open a WebSocket: optional static tokens, JSON Web Tokens
//! ([`crate::http::jwt`]) and, deprecated, the two-part signed tokens; and an
//! Origin allowlist for browsers.
//!
//! Tokens come in `Authorization: Bearer <token>`, in the
//! `Sec-WebSocket-Protocol` offer `dashstream.bearer.<token>` (browsers,
//! which cannot set headers on a WebSocket) or, as a fallback that ends up
//! in access logs, `?token=<token>`.
//!
//! - Static tokens (`WEBSOCKET_AUTH_TOKENS`): any listed token is accepted,
//!   with no claims and no expiry.
//! - JWTs (three parts): HS256 with `WEBSOCKET_AUTH_HMAC_SECRET`, RS256 /
//!   ES256 with `WEBSOCKET_JWT_PUBLIC_KEY_FILE` or `WEBSOCKET_JWT_JWKS`.
//! - Deprecated signed tokens (`WEBSOCKET_AUTH_HMAC_SECRET`, two parts):
//!   `<payload>.<signature>`, both base64url without padding; payload is JSON
//!   `{"exp": <unix seconds>, "tenant": "t"?, "threads": ["a", "b"]?}`,
//!   signature = HMAC-SHA256(secret, payload bytes).
//!
//! A `tenant` claim pins the connection's tenant filter; a `threads` claim
//! limits its thread filter to those threads. Requests outside the claims
//! are refused (403). A token's expiry (plus the leeway) ends the
//! connection it opened.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::http::claims::MAX_TOKEN_BYTES;
pub(crate) use crate::http::claims::{AuthError, Claims};
use crate::http::jwt::Jwt;
use crate::hub::Filter;

#[derive(Clone, Debug, Default)]
pub(crate) struct AuthConfig {
    pub(crate) static_tokens: Vec<String>,
    pub(crate) hmac_secret: Option<Vec<u8>>,
    /// Empty: any Origin (and requests without one) may connect.
    pub(crate) allowed_origins: Vec<String>,
    /// JWT verification (HS256 with `hmac_secret`, RS256 / ES256 with keys).
    pub(crate) jwt: Option<Arc<Jwt>>,
}

impl AuthConfig {
    pub(crate) fn required(&self) -> bool {
        !self.static_tokens.is_empty() || self.hmac_secret.is_some() || self.jwt.is_some()
    }
}

/// The token of an `Authorization: Bearer <token>` header (`Bearer` and one
/// space, as written).
pub(crate) fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[derive(serde::Deserialize)]
struct Payload {
    exp: u64,
    tenant: Option<String>,
    threads: Option<Vec<String>>,
}

/// Signs a payload (for operators' token tooling and tests).
pub fn sign(secret: &[u8], payload_json: &str) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC accepts keys of any length");
    mac.update(payload_json.as_bytes());
    format!(
        "{}.{}",
        b64.encode(payload_json),
        b64.encode(mac.finalize().into_bytes())
    )
}

impl AuthConfig {
    /// Checks the Origin header against the allowlist.
    pub(crate) fn check_origin(&self, origin: Option<&str>) -> Result<(), AuthError> {
        match origin {
            Some(o)
                if !self.allowed_origins.is_empty()
                    && !self.allowed_origins.iter().any(|a| a == o) =>
            {
                let mut shown = o.to_string();
                crate::util::truncate_on_char_boundary(&mut shown, 200);
                Err(AuthError::Origin(shown))
            }
            _ => Ok(()),
        }
    }

    /// Verifies a token; a JWT naming a key id the JWKS does not hold yet
    /// refreshes the JWKS first (bounded, see [`crate::http::jwt`]).
    pub(crate) async fn verify_refreshing(&self, token: Option<&str>) -> Result<Claims, AuthError> {
        match (self.verify(token), &self.jwt, token) {
            (Err(AuthError::UnknownKey(_)), Some(jwt), Some(t)) => {
                jwt.verify_refreshing(t.trim()).await
            }
            (r, _, _) => r,
        }
    }

    /// Verifies a token with the keys loaded now; returns its claims.
    pub(crate) fn verify(&self, token: Option<&str>) -> Result<Claims, AuthError> {
        if !self.required() {
            return Ok(Claims::default());
        }
        let token = token
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(AuthError::Missing)?;
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::TooLong);
        }
        if self
            .static_tokens
            .iter()
            .any(|t| constant_time_eq(t.as_bytes(), token.as_bytes()))
        {
            return Ok(Claims::default());
        }
        if token.bytes().filter(|b| *b == b'.').count() == 2 {
            return match &self.jwt {
                Some(jwt) => jwt.verify(token),
                None => Err(AuthError::Invalid),
            };
        }
        self.verify_legacy(token)
    }

    /// The deprecated two-part signed token.
    fn verify_legacy(&self, token: &str) -> Result<Claims, AuthError> {
        let secret = self.hmac_secret.as_ref().ok_or(AuthError::Invalid)?;
        let (payload_b64, sig_b64) = token.split_once('.').ok_or(AuthError::Invalid)?;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let payload = b64.decode(payload_b64).map_err(|_| AuthError::Invalid)?;
        let sig = b64.decode(sig_b64).map_err(|_| AuthError::Invalid)?;
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).map_err(|_| AuthError::Invalid)?;
        mac.update(&payload);
        mac.verify_slice(&sig).map_err(|_| AuthError::Invalid)?;
        let p: Payload = serde_json::from_slice(&payload).map_err(|_| AuthError::Invalid)?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        if p.exp <= now {
            return Err(AuthError::Expired);
        }
        Ok(Claims {
            tenant: p.tenant,
            threads: p.threads,
            expires_at: Some(p.exp),
        })
    }
}

/// Narrows a requested filter to what the claims allow.
pub(crate) fn enforce(claims: &Claims, filter: &mut Filter) -> Result<(), AuthError> {
    if let Some(t) = &claims.tenant {
        match &filter.tenant {
            Some(req) if **req != **t => {
                return Err(AuthError::Forbidden(format!("tenant '{req}'")))
            }
            _ => filter.tenant = Some(t.as_str().into()),
        }
    }
    if let Some(allowed) = &claims.threads {
        let allowed: HashSet<&str> = allowed.iter().map(String::as_str).collect();
        match &filter.threads {
            Some(req) => {
                if let Some(bad) = req.iter().find(|t| !allowed.contains(&***t)) {
                    return Err(AuthError::Forbidden(format!("thread '{bad}'")));
                }
            }
            None => filter.threads = Some(allowed.iter().map(|t| (*t).into()).collect()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn future() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 3600
    }

    fn hmac_cfg() -> AuthConfig {
        AuthConfig {
            static_tokens: vec![],
            hmac_secret: Some(b"secret".to_vec()),
            ..Default::default()
        }
    }

    #[test]
    fn signed_tokens_carry_claims_and_are_checked() {
        let c = hmac_cfg();
        let exp = future();
        let t = sign(
            b"secret",
            &format!(r#"{{"exp":{exp},"tenant":"acme","threads":["a"]}}"#),
        );
        assert_eq!(
            c.verify(Some(&t)),
            Ok(Claims {
                tenant: Some("acme".into()),
                threads: Some(vec!["a".into()]),
                expires_at: Some(exp),
            })
        );
        let forged = sign(b"other", &format!(r#"{{"exp":{}}}"#, future()));
        assert_eq!(c.verify(Some(&forged)), Err(AuthError::Invalid));
        let expired = sign(b"secret", r#"{"exp":1}"#);
        assert_eq!(c.verify(Some(&expired)), Err(AuthError::Expired));
        assert_eq!(c.verify(None), Err(AuthError::Missing));
        assert_eq!(c.verify(Some("x.y.z")), Err(AuthError::Invalid));
    }

    #[test]
    fn static_tokens_and_no_auth() {
        let c = AuthConfig {
            static_tokens: vec!["tok-123".into()],
            ..Default::default()
        };
        assert!(c.verify(Some("tok-123")).is_ok());
        assert_eq!(c.verify(Some("tok-124")), Err(AuthError::Invalid));
        assert!(
            AuthConfig::default().verify(None).is_ok(),
            "no auth configured"
        );
    }

    #[test]
    fn claims_narrow_the_filter_and_refuse_what_they_do_not_allow() {
        let claims = Claims {
            tenant: Some("acme".into()),
            threads: Some(vec!["a".into(), "b".into()]),
            expires_at: None,
        };
        let mut f = Filter::default();
        enforce(&claims, &mut f).unwrap();
        assert_eq!(f.tenant.as_deref(), Some("acme"));
        assert_eq!(f.threads.as_ref().map(|t| t.len()), Some(2));
        let mut f = Filter::parse(Some("a"), Some("acme"), None, 10).unwrap();
        assert!(enforce(&claims, &mut f).is_ok());
        let mut f = Filter::parse(Some("c"), None, None, 10).unwrap();
        assert!(matches!(
            enforce(&claims, &mut f),
            Err(AuthError::Forbidden(_))
        ));
        let mut f = Filter::parse(None, Some("other"), None, 10).unwrap();
        assert!(matches!(
            enforce(&claims, &mut f),
            Err(AuthError::Forbidden(_))
        ));
    }

    #[test]
    fn origins_are_checked_only_when_an_allowlist_is_set() {
        let c = AuthConfig {
            allowed_origins: vec!["https://dash.example".into()],
            ..Default::default()
        };
        assert!(c.check_origin(Some("https://dash.example")).is_ok());
        assert!(
            c.check_origin(None).is_ok(),
            "non-browser clients send no Origin"
        );
        assert!(matches!(
            c.check_origin(Some("https://evil.example")),
            Err(AuthError::Origin(_))
        ));
        assert!(AuthConfig::default().check_origin(Some("anything")).is_ok());
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_tokens_never_panic(t in ".{0,300}") {
            let _ = hmac_cfg().verify(Some(&t));
            let _ = AuthConfig { static_tokens: vec!["x".into()], ..Default::default() }.verify(Some(&t));
        }
    }
}
