//! Who may call `/admin`: with `ADMIN_TOKEN`, requests carrying
//! `Authorization: Bearer <token>`; without it, on a loopback bind only,
//! requests carrying the `X-Bridge-Admin` header; without it on any other
//! bind, nobody.
//!
//! Both headers are ones a web page cannot make a browser send to another
//! site without a CORS preflight, which the bridge never grants: a page open
//! in an operator's browser cannot release a thread or reset the breaker by
//! a cross-site form or `fetch`. On a loopback bind the `Host` header must
//! name a loopback address or `localhost` (DNS rebinding gives a page the
//! same origin as the bridge, but under the attacker's host name), and a
//! request whose `Origin` is not its own `Host` is refused.

use std::net::{IpAddr, SocketAddr};

use axum::http::{header, HeaderMap, StatusCode};

use crate::http::auth::constant_time_eq;

/// The header a loopback caller without a token sends (any value).
pub(crate) const LOCAL_ADMIN_HEADER: &str = "x-bridge-admin";

/// How admin endpoints are protected.
#[derive(Clone, Debug)]
pub(crate) struct AdminAuth {
    mode: Mode,
    /// The bind is a loopback address: `Host` is checked.
    loopback: bool,
}

#[derive(Clone, Debug)]
enum Mode {
    Token(String),
    /// No token configured and bound to loopback: local callers that send
    /// [`LOCAL_ADMIN_HEADER`].
    LoopbackOnly,
    /// No token configured on a non-loopback bind: admin is disabled.
    Disabled,
}

/// Why an admin request is refused.
pub(crate) struct AdminRefusal {
    pub(crate) status: StatusCode,
    pub(crate) code: &'static str,
    pub(crate) message: &'static str,
}

impl AdminAuth {
    pub(crate) fn new(token: Option<String>, listen: SocketAddr) -> Self {
        let loopback = listen.ip().is_loopback();
        let mode = match token {
            Some(t) => Mode::Token(t),
            None if loopback => Mode::LoopbackOnly,
            None => Mode::Disabled,
        };
        Self { mode, loopback }
    }

    pub(crate) fn check(&self, headers: &HeaderMap) -> Result<(), AdminRefusal> {
        let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
        if self.loopback && !host.is_some_and(is_loopback_host) {
            return Err(AdminRefusal {
                status: StatusCode::FORBIDDEN,
                code: "host_not_allowed",
                message: "on a loopback bind, admin requests must name a loopback Host (127.0.0.1, [::1] or localhost)",
            });
        }
        if let Some(origin) = headers.get(header::ORIGIN) {
            let same = match (origin.to_str().ok(), host) {
                (Some(o), Some(h)) => origin_host(o).is_some_and(|oh| oh.eq_ignore_ascii_case(h)),
                _ => false,
            };
            if !same {
                return Err(AdminRefusal {
                    status: StatusCode::FORBIDDEN,
                    code: "cross_origin",
                    message: "admin requests from another origin are refused",
                });
            }
        }
        match &self.mode {
            Mode::LoopbackOnly => {
                if headers.contains_key(LOCAL_ADMIN_HEADER) {
                    Ok(())
                } else {
                    Err(AdminRefusal {
                        status: StatusCode::FORBIDDEN,
                        code: "admin_header_required",
                        message:
                            "without ADMIN_TOKEN, admin requests need the header X-Bridge-Admin: 1",
                    })
                }
            }
            Mode::Disabled => Err(AdminRefusal {
                status: StatusCode::FORBIDDEN,
                code: "admin_disabled",
                message:
                    "admin endpoints are disabled on a non-loopback bind until ADMIN_TOKEN is set",
            }),
            Mode::Token(expected) => {
                let given = crate::http::auth::bearer(headers).unwrap_or("");
                if constant_time_eq(given.as_bytes(), expected.as_bytes()) {
                    Ok(())
                } else {
                    Err(AdminRefusal {
                        status: StatusCode::UNAUTHORIZED,
                        code: "unauthorized",
                        message: "missing or wrong bearer token",
                    })
                }
            }
        }
    }
}

/// `host[:port]` of a `scheme://host[:port]` origin.
fn origin_host(origin: &str) -> Option<&str> {
    let (_, rest) = origin.split_once("://")?;
    Some(rest.split('/').next().unwrap_or(rest))
}

/// `localhost`, `127.x.y.z` or `[::1]`, with or without a port.
fn is_loopback_host(host: &str) -> bool {
    let name = if let Some(v6) = host.strip_prefix('[') {
        match v6.split_once(']') {
            Some((addr, rest)) if rest.is_empty() || rest.starts_with(':') => addr,
            _ => return false,
        }
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    name.eq_ignore_ascii_case("localhost")
        || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    fn status(a: &AdminAuth, pairs: &[(&'static str, &str)]) -> Option<&'static str> {
        a.check(&headers(pairs)).err().map(|r| r.code)
    }

    #[test]
    fn without_a_token_a_loopback_caller_must_send_the_admin_header_and_a_loopback_host() {
        let a = AdminAuth::new(None, "127.0.0.1:3002".parse().unwrap());
        let host = ("host", "127.0.0.1:3002");
        assert_eq!(status(&a, &[host, ("x-bridge-admin", "1")]), None);
        for h in ["localhost:3002", "[::1]:3002", "127.0.0.1", "LOCALHOST"] {
            assert_eq!(
                status(&a, &[("host", h), ("x-bridge-admin", "1")]),
                None,
                "{h}"
            );
        }
        // A simple cross-site request (form POST, no custom header).
        assert_eq!(status(&a, &[host]), Some("admin_header_required"));
        // DNS rebinding: same origin as far as the browser knows, foreign Host.
        for h in [
            "evil.example:3002",
            "127.0.0.1.evil.example",
            "[::1]x",
            "localhost.evil",
        ] {
            assert_eq!(
                status(&a, &[("host", h), ("x-bridge-admin", "1")]),
                Some("host_not_allowed"),
                "{h}"
            );
        }
        assert_eq!(
            status(&a, &[("x-bridge-admin", "1")]),
            Some("host_not_allowed")
        );
        // A page on another origin (with CORS it might add the header).
        assert_eq!(
            status(
                &a,
                &[
                    host,
                    ("x-bridge-admin", "1"),
                    ("origin", "http://evil.example")
                ]
            ),
            Some("cross_origin")
        );
        assert_eq!(
            status(
                &a,
                &[
                    host,
                    ("x-bridge-admin", "1"),
                    ("origin", "http://127.0.0.1:3002")
                ]
            ),
            None,
            "the bridge's own page"
        );
        assert_eq!(
            status(&a, &[host, ("x-bridge-admin", "1"), ("origin", "null")]),
            Some("cross_origin")
        );
    }

    #[test]
    fn with_a_token_the_bearer_is_required_and_off_loopback_any_host_is_fine() {
        let a = AdminAuth::new(
            Some("admin-token-0123456789".into()),
            "0.0.0.0:3002".parse().unwrap(),
        );
        let bearer = ("authorization", "Bearer admin-token-0123456789");
        assert_eq!(status(&a, &[("host", "bridge.internal"), bearer]), None);
        assert_eq!(status(&a, &[bearer]), None);
        assert_eq!(
            status(&a, &[("host", "bridge.internal"), ("x-bridge-admin", "1")]),
            Some("unauthorized")
        );
        assert_eq!(
            status(
                &a,
                &[
                    ("host", "bridge.internal"),
                    bearer,
                    ("origin", "https://evil.example")
                ]
            ),
            Some("cross_origin")
        );
        let off = AdminAuth::new(None, "0.0.0.0:3002".parse().unwrap());
        assert_eq!(
            status(&off, &[("host", "h"), ("x-bridge-admin", "1")]),
            Some("admin_disabled")
        );
    }
}
