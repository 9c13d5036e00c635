//! Dead-letter stage: the DLQ record format, the fail-open / fail-closed sink
//! the consumer task hands rejected records to ([`sink`]), and the operator
//! tools that read and redrive the topic ([`tools`]).

pub(crate) mod config;
pub(crate) mod document;
pub(crate) mod sink;
pub(crate) mod tools;
