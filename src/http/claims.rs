//! What a token allows ([`Claims`]) and why one is refused ([`AuthError`]),
//! shared by the token checks (`auth`, `jwt`).

/// Longest token accepted, in bytes.
pub(crate) const MAX_TOKEN_BYTES: usize = 4096;

/// What a valid token allows.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Claims {
    pub(crate) tenant: Option<String>,
    pub(crate) threads: Option<Vec<String>>,
    /// Unix seconds from which the token is no longer accepted (its `exp`
    /// plus the leeway): a connection it opened is closed then. `None`: a
    /// static token, or no token needed.
    pub(crate) expires_at: Option<u64>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum AuthError {
    #[error("a token is required (Authorization: Bearer …, Sec-WebSocket-Protocol: dashstream.v1, dashstream.bearer.… or ?token=…)")]
    Missing,
    #[error("token is longer than {MAX_TOKEN_BYTES} bytes")]
    TooLong,
    #[error("token is not valid")]
    Invalid,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet (nbf)")]
    NotYetValid,
    #[error("token audience is not accepted")]
    Audience,
    #[error("token issuer is not accepted")]
    Issuer,
    #[error("token lacks the required claim '{0}'")]
    MissingClaim(String),
    #[error("token claim {0}")]
    BadClaim(String),
    #[error("token is signed with an unknown key id '{0}'")]
    UnknownKey(String),
    #[error("token algorithm {0} is not accepted here (HS256 needs WEBSOCKET_AUTH_HMAC_SECRET, RS256/ES256 a public key or JWKS of that kind)")]
    Algorithm(String),
    #[error("origin '{0}' is not allowed")]
    Origin(String),
    #[error("the token does not allow {0}")]
    Forbidden(String),
}

impl AuthError {
    /// HTTP status for the refusal.
    pub(crate) fn status(&self) -> u16 {
        match self {
            AuthError::Origin(_) | AuthError::Forbidden(_) => 403,
            _ => 401,
        }
    }
}
