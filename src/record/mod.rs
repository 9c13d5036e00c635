//! What a record is once read: the DashStream wire format ([`decode`]) and
//! the [`frame::Frame`] built once per record and shared by every stage after
//! ingest (hub, replay tiers, sessions), with the control frames clients get.

pub(crate) mod decode;
pub(crate) mod envelope;
pub(crate) mod frame;
pub(crate) mod scan;
pub(crate) mod summary;
#[cfg(test)]
pub(crate) mod testing;
pub(crate) mod wire;
