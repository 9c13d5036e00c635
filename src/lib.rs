//! kafka-ws-bridge: streams DashStream v1 telemetry from Kafka to WebSocket
//! dashboards. See docs/ARCHITECTURE.md for the map of stages.
//!
//! The crate is the `kafka-ws-bridge` binary; what it exports here is what
//! that binary, the benchmarks and the tests use: the command line, the wire
//! format (encode, decode, the binary envelope), the synthetic producer and
//! the signed-token helper.

mod cli;
mod config;
mod dlq;
mod follow;
mod http;
mod hub;
mod ingest;
mod record;
mod replay;
mod serve;
mod session;
mod settings;
mod shutdown;
mod telemetry;
mod util;

pub use cli::main;
pub use cli::synth::{now_us, Generator, Injected, SynthConfig, SynthRecord};
pub use http::auth::sign;
pub use record::decode::MessageKind;
pub use record::decode::{decode, encode_record, DecodeError, DecodeLimits, Decoded};
pub use record::frame::{envelope_to_json, parse_envelope, Cursor, Envelope, EnvelopeError};

/// Metric names the benchmarks read from `/metrics` (the catalog is `telemetry`).
pub mod metric_names {
    pub use crate::telemetry::{
        CLIENT_LAG_MESSAGES, DROPPED_MESSAGES, DROP_LAGGED_RECEIVER, FRAMES_SENT, REPLAY_KAFKA_HITS,
    };
}

/// Generated DashStream v1 types (prost) with proto3-JSON serde impls (pbjson).
pub mod proto {
    #![allow(clippy::all, missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/dashstream.v1.rs"));
    include!(concat!(env!("OUT_DIR"), "/dashstream.v1.serde.rs"));
}

/// Entry points of the parsers that read client input, for the fuzz targets
/// in `fuzz/` (not an API: each returns only what a target checks).
#[doc(hidden)]
pub mod fuzzing {
    use std::net::SocketAddr;

    /// A client's text message during live delivery: the JSON reply it gets.
    pub fn client_text(text: &str) -> String {
        crate::session::handle_client_text(text)
    }

    /// A record value read on the wire (as ingest reads it) and decoded in
    /// full: panics if the wire check vouches for a body the decoder
    /// refuses, or reads it differently.
    pub fn wire_agrees(value: &[u8]) {
        let limits = crate::record::decode::DecodeLimits::default();
        let Ok(u) = crate::record::decode::unframe(Some(value), &limits) else {
            return;
        };
        if let Some(l) = crate::record::wire::light(u.body()) {
            let d = u
                .decode(&limits)
                .expect("the decoder accepts what the wire check vouches for");
            assert_eq!(
                crate::record::summary::Summary::of_light(&l),
                crate::record::summary::Summary::of(&d)
            );
        }
    }

    /// A `/ws` query string through the checks the upgrade runs (filter,
    /// format, resume); `Err` carries the reason a client would read.
    pub fn ws_query(query: &str) -> Result<(), String> {
        crate::http::ws::check_query(query, 256, crate::replay::request::MAX_RESUME_PARTITIONS)
    }

    /// A first message: `Ok(true)` when it is a valid resume request.
    pub fn resume_message(text: &str) -> Result<bool, String> {
        let v: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
        if v["type"] != "resume" {
            return Ok(false);
        }
        crate::replay::ResumeFrom::from_message(&v, crate::replay::request::MAX_RESUME_PARTITIONS)
            .map(|_| true)
    }

    /// A token checked against a bridge with one static token, an HMAC
    /// secret (deprecated signed tokens and HS256 JWTs with an audience and
    /// an issuer), then its claims against a filter from `query`.
    pub fn token(token: &str, query_tenant: Option<&str>) -> Result<(), String> {
        let jwt = crate::http::jwt::Jwt::new(crate::http::jwt::JwtSettings {
            hs256_secret: Some(TOKEN_SECRET.to_vec()),
            public_key_pem: None,
            jwks: None,
            jwks_refresh: std::time::Duration::from_secs(300),
            issuers: vec!["fuzz-issuer".into()],
            audiences: vec!["fuzz-audience".into()],
            leeway_secs: 30,
            tenant_claim: "tenant".into(),
            threads_claim: "threads".into(),
        })
        .map_err(|(_, e)| e)?;
        let auth = crate::http::auth::AuthConfig {
            static_tokens: vec!["static-token-0123456789".into()],
            hmac_secret: Some(TOKEN_SECRET.to_vec()),
            jwt: Some(jwt),
            ..Default::default()
        };
        let claims = auth.verify(Some(token)).map_err(|e| e.to_string())?;
        let mut filter =
            crate::hub::Filter::parse(None, query_tenant, None, 256).map_err(|e| e.to_string())?;
        crate::http::auth::enforce(&claims, &mut filter).map_err(|e| e.to_string())
    }

    /// An `X-Forwarded-For` value from a trusted proxy: the address counted.
    pub fn forwarded_for(value: &[u8]) -> std::net::IpAddr {
        crate::http::admission::fuzz_client_ip(value, SocketAddr::from(([10, 0, 0, 1], 4000)))
    }

    /// A record value as a replay reads it back: its body is looked at on the
    /// wire (never a panic), and where it also decodes, the wire filter never
    /// refuses what the decoded record's filter takes (filters from the
    /// record's own kind, tenant and thread, and from ids it does not have).
    /// Panics on a disagreement.
    pub fn replay_filter(value: &[u8]) {
        use crate::hub::Filter;
        let limits = crate::record::decode::DecodeLimits::default();
        let Ok(unframed) = crate::record::decode::unframe(Some(value), &limits) else {
            return;
        };
        let peek = crate::record::scan::peek(unframed.body());
        let (Some(peek), Ok(decoded)) = (peek, unframed.decode(&limits)) else {
            return;
        };
        let summary = crate::record::summary::Summary::of(&decoded);
        let (kind, tenant, thread) = (
            summary.kind.as_str(),
            summary.tenant.to_string(),
            summary.thread.to_string(),
        );
        let cursor = crate::record::frame::Cursor {
            partition: 0,
            offset: 0,
        };
        let frame = crate::record::frame::Frame::new(cursor, None, value, summary, None);
        let nonempty = |s: &str| (!s.trim().is_empty()).then(|| s.to_string());
        let filters = [
            Filter::parse(None, nonempty(&tenant).as_deref(), None, 256),
            Filter::parse(nonempty(&thread).as_deref(), None, None, 256),
            Filter::parse(None, None, Some(kind), 256),
            Filter::parse(Some("x"), Some("x"), Some("event,event_batch"), 256),
        ];
        for f in filters.into_iter().flatten() {
            if f.matches(&frame) {
                assert!(f.may_match(&peek), "wire filter refused a match: {f:?}");
            }
        }
    }

    /// The HMAC secret `token` uses, to sign seeds.
    pub const TOKEN_SECRET: &[u8] = b"fuzz-secret-0123456789abcdefghijklmn";
}
