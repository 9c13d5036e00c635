//! The integration suite, one binary: the real bridge binary against the real
//! broker and Redis that `scripts/test.sh` starts (`KWB_TEST_BROKERS`,
//! `KWB_TEST_REDIS_URL`). Nothing here is mocked; without the services every
//! test fails loudly.

// Each suite uses part of the shared harness.
#![allow(dead_code)]

mod common;

mod browser;
mod churn;
mod delivery;
mod dlq;
mod faults;
mod instances;
mod layout;
mod lifecycle;
mod observability;
mod ops_kit;
mod overload;
mod protocol;
mod resume;
mod security;
mod tokens;
