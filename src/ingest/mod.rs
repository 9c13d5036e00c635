//! Ingest: the consumer task. Each Kafka record is decoded, its sequence
//! numbers validated under the gap policy, held (halted thread), rate
//! limited or delivered to the hub, and its offset stored once it is safe to
//! commit. What cannot be delivered goes to the DLQ.
//!
//! - [`consume`]: the Kafka consumer, librdkafka callbacks, the record loop,
//!   operator commands, offsets and lag.
//! - [`pipeline`]: one record's path, returning an `Outcome`.
//! - [`sequence`]: the per-thread sequence validator.
//! - [`offsets`]: the commit point per partition.
//! - [`ratelimit`]: per-tenant token buckets.

#[cfg(test)]
mod bounds;
pub(crate) mod config;
pub(crate) mod consume;
pub(crate) mod halt;
pub(crate) mod halt_store;
pub(crate) mod offsets;
pub(crate) mod pipeline;
pub(crate) mod ratelimit;
mod reset;
pub(crate) mod sequence;
pub(crate) mod status;
