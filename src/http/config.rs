//! The HTTP surface's settings: the listener, client message limits, the
//! admin token, admission (connection limits, trusted proxies, backpressure
//! weights, the breaker, the memory limit) and `/ws` access.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use crate::http::admission::{AdmissionConfig, IpNet};
use crate::http::auth::AuthConfig;
use crate::http::backpressure::{self, BreakerConfig, Weights};
use crate::http::jwt::{JwksSource, Jwt, JwtSettings};
use crate::settings::{positive, ConfigError};

#[derive(Args, Clone, Debug)]
pub(crate) struct HttpArgs {
    #[arg(long, env = "WEBSOCKET_HOST", default_value = "0.0.0.0")]
    pub(crate) websocket_host: IpAddr,
    #[arg(long, env = "WEBSOCKET_PORT", default_value_t = 3002)]
    pub(crate) websocket_port: u16,
    /// Largest message a client may send (control frames), in bytes.
    #[arg(long, env = "WEBSOCKET_MAX_INCOMING_BYTES", default_value_t = 65_536)]
    pub(crate) websocket_max_incoming_bytes: usize,
    /// Most values in one filter list (?threads=, ?types=).
    #[arg(long, env = "WEBSOCKET_MAX_FILTER_VALUES", default_value_t = 256)]
    pub(crate) websocket_max_filter_values: usize,
    /// Bearer token for /admin endpoints. Without it, admin endpoints only answer on a loopback bind.
    #[arg(long, env = "ADMIN_TOKEN", hide_env_values = true)]
    pub(crate) admin_token: Option<String>,
    /// WebSocket clients at most (new ones get HTTP 503 beyond it).
    #[arg(long, env = "WEBSOCKET_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub(crate) websocket_max_connections: usize,
    /// WebSocket clients per client IP at most (new ones get HTTP 429 beyond it).
    #[arg(
        long,
        env = "WEBSOCKET_MAX_CONNECTIONS_PER_IP",
        default_value_t = 1_000
    )]
    pub(crate) websocket_max_connections_per_ip: usize,
    /// IPv6 clients share one per-IP slot count per network of this prefix length (one host
    /// usually holds a whole /64).
    #[arg(long, env = "WEBSOCKET_IPV6_PREFIX", default_value_t = 64)]
    pub(crate) websocket_ipv6_prefix: u8,
    /// Proxies whose X-Forwarded-For is believed: comma-separated IPs or networks (10.0.0.0/8).
    #[arg(long, env = "WEBSOCKET_TRUSTED_PROXY_IPS", value_delimiter = ',')]
    pub(crate) websocket_trusted_proxy_ips: Vec<String>,
    /// Weights of the backpressure level: `connections=0.3,client_queues=0.25,pipeline_queues=0.25,memory=0.2`.
    #[arg(long, env = "BACKPRESSURE_WEIGHTS", default_value = "")]
    pub(crate) backpressure_weights: String,
    /// Level at which the circuit breaker opens.
    #[arg(long, env = "BREAKER_CRITICAL", default_value_t = 0.95)]
    pub(crate) breaker_critical: f64,
    /// Level below which a half-open breaker closes.
    #[arg(long, env = "BREAKER_RECOVERY", default_value_t = 0.70)]
    pub(crate) breaker_recovery: f64,
    /// Seconds an open breaker waits before probing (half-open).
    #[arg(long, env = "BREAKER_OPEN_SECS", default_value_t = 10)]
    pub(crate) breaker_open_secs: u64,
    /// New connections admitted per second while half-open.
    #[arg(long, env = "BREAKER_HALF_OPEN_PROBES", default_value_t = 5)]
    pub(crate) breaker_half_open_probes: u32,
    /// Memory the process may use, for the backpressure level (default: the cgroup limit, if any).
    #[arg(long, env = "MEMORY_LIMIT_BYTES")]
    pub(crate) memory_limit_bytes: Option<u64>,
    /// Kernel send buffer per client socket, in bytes (default: the OS's autotuning). Bounds
    /// what a stalled client holds in the kernel; its backlog then shows in its queue.
    #[arg(long, env = "WEBSOCKET_SEND_BUFFER_BYTES")]
    pub(crate) websocket_send_buffer_bytes: Option<usize>,
    /// Seconds a connection may take to send a request's headers; then it is closed.
    #[arg(long, env = "HTTP_HEADER_TIMEOUT_SECS", default_value_t = 10)]
    pub(crate) http_header_timeout_secs: u64,
    /// HTTP connections open at most before they become WebSockets (or without one); beyond
    /// it a new connection gets 503 and is closed.
    #[arg(long, env = "HTTP_MAX_PENDING_CONNECTIONS", default_value_t = 1024)]
    pub(crate) http_max_pending_connections: usize,
    /// Static tokens accepted for /ws (comma-separated); unset with no HMAC secret: no token needed.
    #[arg(
        long,
        env = "WEBSOCKET_AUTH_TOKENS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub(crate) websocket_auth_tokens: Vec<String>,
    /// Shared secret for HS256 JWTs (and the deprecated two-part signed tokens) on /ws.
    #[arg(long, env = "WEBSOCKET_AUTH_HMAC_SECRET", hide_env_values = true)]
    pub(crate) websocket_auth_hmac_secret: Option<String>,
    /// PEM public key (RSA: RS256, EC P-256: ES256) for /ws JWTs.
    #[arg(long, env = "WEBSOCKET_JWT_PUBLIC_KEY_FILE")]
    pub(crate) websocket_jwt_public_key_file: Option<std::path::PathBuf>,
    /// JWKS for /ws JWTs (RS256, ES256): a file path or an http(s) URL.
    #[arg(long, env = "WEBSOCKET_JWT_JWKS")]
    pub(crate) websocket_jwt_jwks: Option<String>,
    /// Seconds between JWKS refreshes (a token with an unknown `kid` also refreshes it, at most once a second).
    #[arg(long, env = "WEBSOCKET_JWT_JWKS_REFRESH_SECS", default_value_t = 300)]
    pub(crate) websocket_jwt_jwks_refresh_secs: u64,
    /// Accepted `iss` values (comma-separated); set: `iss` is required.
    #[arg(long, env = "WEBSOCKET_JWT_ISSUER", value_delimiter = ',')]
    pub(crate) websocket_jwt_issuer: Vec<String>,
    /// Accepted `aud` values (comma-separated); set: `aud` is required.
    #[arg(long, env = "WEBSOCKET_JWT_AUDIENCE", value_delimiter = ',')]
    pub(crate) websocket_jwt_audience: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    #[arg(long, env = "WEBSOCKET_JWT_LEEWAY_SECS", default_value_t = 30)]
    pub(crate) websocket_jwt_leeway_secs: u64,
    /// The JWT claim holding the tenant the connection is pinned to.
    #[arg(long, env = "WEBSOCKET_JWT_TENANT_CLAIM", default_value = "tenant")]
    pub(crate) websocket_jwt_tenant_claim: String,
    /// The JWT claim holding the threads the connection may read (an array of strings).
    #[arg(long, env = "WEBSOCKET_JWT_THREADS_CLAIM", default_value = "threads")]
    pub(crate) websocket_jwt_threads_claim: String,
    /// Origins allowed to open /ws from a browser (comma-separated); unset: any.
    #[arg(long, env = "WEBSOCKET_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub(crate) websocket_allowed_origins: Vec<String>,
}

fn list(v: &[String]) -> Vec<String> {
    v.iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

impl HttpArgs {
    /// JWT verification, when a secret, a public key or a JWKS is set: the
    /// key file and a JWKS file are read now (a start-up error names the
    /// variable); a JWKS URL is fetched when the server starts.
    fn jwt(&self) -> Result<Option<Arc<Jwt>>, ConfigError> {
        let secret = self.websocket_auth_hmac_secret.clone();
        let jwks = self
            .websocket_jwt_jwks
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(JwksSource::parse);
        if !(10..=86_400).contains(&self.websocket_jwt_jwks_refresh_secs) {
            return Err(ConfigError::new(
                "WEBSOCKET_JWT_JWKS_REFRESH_SECS",
                "must be between 10 and 86400",
            ));
        }
        if self.websocket_jwt_leeway_secs > 300 {
            return Err(ConfigError::new("WEBSOCKET_JWT_LEEWAY_SECS", "at most 300"));
        }
        for (name, v) in [
            (
                "WEBSOCKET_JWT_TENANT_CLAIM",
                &self.websocket_jwt_tenant_claim,
            ),
            (
                "WEBSOCKET_JWT_THREADS_CLAIM",
                &self.websocket_jwt_threads_claim,
            ),
        ] {
            if v.trim().is_empty() || v.len() > 100 {
                return Err(ConfigError::new(
                    name,
                    "must be a claim name of 1 to 100 characters",
                ));
            }
        }
        if secret.is_none() && self.websocket_jwt_public_key_file.is_none() && jwks.is_none() {
            return Ok(None);
        }
        if let Some(JwksSource::Url(u)) = &jwks {
            reqwest::Url::parse(u)
                .map_err(|e| ConfigError::new("WEBSOCKET_JWT_JWKS", format!("{u}: {e}")))?;
        }
        let public_key_pem = match &self.websocket_jwt_public_key_file {
            None => None,
            Some(p) => Some(std::fs::read(p).map_err(|e| {
                ConfigError::new(
                    "WEBSOCKET_JWT_PUBLIC_KEY_FILE",
                    format!("{}: {e}", p.display()),
                )
            })?),
        };
        Jwt::new(JwtSettings {
            hs256_secret: secret.map(String::into_bytes),
            public_key_pem,
            jwks,
            jwks_refresh: Duration::from_secs(self.websocket_jwt_jwks_refresh_secs),
            issuers: list(&self.websocket_jwt_issuer),
            audiences: list(&self.websocket_jwt_audience),
            leeway_secs: self.websocket_jwt_leeway_secs,
            tenant_claim: self.websocket_jwt_tenant_claim.trim().to_string(),
            threads_claim: self.websocket_jwt_threads_claim.trim().to_string(),
        })
        .map(Some)
        .map_err(|(var, e)| ConfigError::new(var, e))
    }
}

/// The HTTP surface's validated settings.
#[derive(Clone, Debug)]
pub(crate) struct HttpConfig {
    pub(crate) listen: SocketAddr,
    pub(crate) max_incoming_bytes: usize,
    pub(crate) max_filter_values: usize,
    pub(crate) admin_token: Option<String>,
    pub(crate) admission: AdmissionConfig,
    pub(crate) auth: AuthConfig,
    pub(crate) send_buffer: Option<usize>,
    pub(crate) header_timeout: Duration,
    pub(crate) max_pending: usize,
}

impl HttpArgs {
    pub(crate) fn validate(&self) -> Result<HttpConfig, ConfigError> {
        if self.websocket_max_incoming_bytes < 256 {
            return Err(ConfigError::new(
                "WEBSOCKET_MAX_INCOMING_BYTES",
                "must be at least 256",
            ));
        }
        positive(
            "WEBSOCKET_MAX_FILTER_VALUES",
            self.websocket_max_filter_values as u64,
        )?;
        if let Some(t) = &self.admin_token {
            if t.len() < 16 {
                return Err(ConfigError::new(
                    "ADMIN_TOKEN",
                    "must be at least 16 characters",
                ));
            }
        }
        if self.memory_limit_bytes == Some(0) {
            return Err(ConfigError::new(
                "MEMORY_LIMIT_BYTES",
                "must be > 0 (unset it to use the cgroup limit)",
            ));
        }
        positive(
            "WEBSOCKET_MAX_CONNECTIONS",
            self.websocket_max_connections as u64,
        )?;
        positive(
            "WEBSOCKET_MAX_CONNECTIONS_PER_IP",
            self.websocket_max_connections_per_ip as u64,
        )?;
        if !(32..=128).contains(&self.websocket_ipv6_prefix) {
            return Err(ConfigError::new(
                "WEBSOCKET_IPV6_PREFIX",
                "must be between 32 and 128",
            ));
        }
        positive("HTTP_HEADER_TIMEOUT_SECS", self.http_header_timeout_secs)?;
        if self.http_header_timeout_secs > 300 {
            return Err(ConfigError::new("HTTP_HEADER_TIMEOUT_SECS", "at most 300"));
        }
        positive(
            "HTTP_MAX_PENDING_CONNECTIONS",
            self.http_max_pending_connections as u64,
        )?;
        positive("BREAKER_OPEN_SECS", self.breaker_open_secs)?;
        positive(
            "BREAKER_HALF_OPEN_PROBES",
            u64::from(self.breaker_half_open_probes),
        )?;
        let trusted_proxies = self
            .websocket_trusted_proxy_ips
            .iter()
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
            .map(IpNet::parse)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ConfigError::new("WEBSOCKET_TRUSTED_PROXY_IPS", e))?;
        let weights = if self.backpressure_weights.trim().is_empty() {
            Weights::default()
        } else {
            Weights::parse(&self.backpressure_weights)
                .map_err(|e| ConfigError::new("BACKPRESSURE_WEIGHTS", e))?
        };
        if !(0.0 < self.breaker_recovery
            && self.breaker_recovery < self.breaker_critical
            && self.breaker_critical <= 1.0)
        {
            return Err(ConfigError::new(
                "BREAKER_RECOVERY / BREAKER_CRITICAL",
                "need 0 < recovery < critical ≤ 1",
            ));
        }
        if self
            .websocket_auth_tokens
            .iter()
            .any(|t| !t.trim().is_empty() && t.trim().len() < 16)
        {
            return Err(ConfigError::new(
                "WEBSOCKET_AUTH_TOKENS",
                "each token must be at least 16 characters",
            ));
        }
        if self
            .websocket_auth_hmac_secret
            .as_ref()
            .is_some_and(|s| s.len() < 32)
        {
            return Err(ConfigError::new(
                "WEBSOCKET_AUTH_HMAC_SECRET",
                "must be at least 32 characters",
            ));
        }
        let jwt = self.jwt()?;
        Ok(HttpConfig {
            listen: SocketAddr::new(self.websocket_host, self.websocket_port),
            max_incoming_bytes: self.websocket_max_incoming_bytes,
            max_filter_values: self.websocket_max_filter_values,
            admin_token: self.admin_token.clone(),
            admission: AdmissionConfig {
                max_connections: self.websocket_max_connections,
                max_per_ip: self.websocket_max_connections_per_ip,
                ipv6_prefix: self.websocket_ipv6_prefix,
                trusted_proxies,
                weights,
                breaker: BreakerConfig {
                    critical: self.breaker_critical,
                    recovery: self.breaker_recovery,
                    open_for: Duration::from_secs(self.breaker_open_secs),
                    half_open_probes: self.breaker_half_open_probes,
                },
                memory_limit: self
                    .memory_limit_bytes
                    .or_else(backpressure::cgroup_memory_limit),
            },
            auth: AuthConfig {
                static_tokens: self
                    .websocket_auth_tokens
                    .iter()
                    .map(|t| t.trim().to_string())
                    .filter(|t| !t.is_empty())
                    .collect(),
                hmac_secret: self
                    .websocket_auth_hmac_secret
                    .clone()
                    .map(String::into_bytes),
                allowed_origins: self
                    .websocket_allowed_origins
                    .iter()
                    .map(|o| o.trim().to_string())
                    .filter(|o| !o.is_empty())
                    .collect(),
                jwt,
            },
            send_buffer: self.websocket_send_buffer_bytes,
            header_timeout: Duration::from_secs(self.http_header_timeout_secs),
            max_pending: self.http_max_pending_connections,
        })
    }
}
