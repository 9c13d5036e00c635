//! A record checked on the wire instead of decoded: [`light`] tells, without
//! allocating, whether the full protobuf decode would accept a body, and
//! reads what ingest needs of it (its kind, its header's ids, sequence and
//! timestamp, an event's type). The full decode then happens only where its
//! result is used: the JSON text (once per record, on first use) and the DLQ
//! document of a record that is refused.
//!
//! The check follows the decoder's rules exactly, from a table of every
//! message's fields generated from the .proto files at build time: a key's
//! field number and wire type, a known field's expected wire type (a
//! repeated number packed or not), UTF-8 strings, lengths inside their
//! message, groups skipped with matching ends, varints of at most ten bytes,
//! and the same recursion limit. Whatever it cannot vouch for, or whose
//! shape is unusual (a batch, a repeated header, several bodies), it leaves
//! to the full decode, so every verdict stays the decoder's.

use crate::record::decode::{MessageKind, MAX_ID_BYTES, SUPPORTED_SCHEMA_VERSION};

/// What a field's bytes must look like. (The generated table uses the
/// kinds the .proto files need, not necessarily all.)
#[allow(dead_code)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Varint,
    I32,
    I64,
    /// A repeated number: unpacked (its scalar wire type) or packed.
    PackedVarint,
    PackedI32,
    PackedI64,
    Str,
    Bytes,
    /// A message (a map entry included): its index in `MESSAGES`.
    Msg(usize),
}

include!(concat!(env!("OUT_DIR"), "/wire_schema.rs"));

/// The decoder's nesting limit (prost's `RECURSION_LIMIT`).
const RECURSION_LIMIT: u32 = 100;

/// Wire types (also read by `record::scan`).
pub(crate) const VARINT: u64 = 0;
pub(crate) const I64: u64 = 1;
pub(crate) const LEN: u64 = 2;
pub(crate) const START_GROUP: u64 = 3;
pub(crate) const END_GROUP: u64 = 4;
pub(crate) const I32: u64 = 5;

/// A varint as the decoder reads it: at most ten bytes, the tenth at most 1.
pub(crate) fn varint(b: &[u8], i: &mut usize) -> Option<u64> {
    // Most varints (every key, small numbers) are one byte.
    let first = *b.get(*i)?;
    if first < 0x80 {
        *i += 1;
        return Some(u64::from(first));
    }
    let mut v = 0u64;
    for n in 0..10 {
        let byte = *b.get(*i)?;
        *i += 1;
        v |= u64::from(byte & 0x7f) << (7 * n);
        if byte < 0x80 {
            return (n < 9 || byte < 2).then_some(v);
        }
    }
    None
}

/// A UTF-8 string field.
fn text<'a>(b: &'a [u8], i: &mut usize) -> Option<&'a str> {
    std::str::from_utf8(delimited(b, i)?).ok()
}

/// Whether `b` is UTF-8; ASCII (most ids and names) is told a word at a time.
fn utf8(b: &[u8]) -> bool {
    b.is_ascii() || std::str::from_utf8(b).is_ok()
}

/// A field key: (field number, wire type).
fn key(b: &[u8], i: &mut usize) -> Option<(u32, u64)> {
    let k = varint(b, i)?;
    let (tag, wire) = (u32::try_from(k).ok()? >> 3, k & 7);
    (tag >= 1 && wire <= I32).then_some((tag, wire))
}

/// The bytes of a length-delimited field.
fn delimited<'a>(b: &'a [u8], i: &mut usize) -> Option<&'a [u8]> {
    let len = usize::try_from(varint(b, i)?).ok()?;
    let end = i.checked_add(len).filter(|e| *e <= b.len())?;
    let s = &b[*i..end];
    *i = end;
    Some(s)
}

fn fixed(b: &[u8], i: &mut usize, n: usize) -> Option<()> {
    let end = i.checked_add(n).filter(|e| *e <= b.len())?;
    *i = end;
    Some(())
}

/// True when the decoder accepts `b` as message `msg`, `depth` nesting
/// levels below the limit.
fn valid(b: &[u8], msg: usize, depth: u32) -> bool {
    let fields = MESSAGES[msg];
    let mut i = 0;
    while i < b.len() {
        let Some((tag, wire)) = key(b, &mut i) else {
            return false;
        };
        let ok = match fields.iter().find(|(n, _)| *n == tag) {
            Some((_, kind)) => field(b, &mut i, wire, *kind, depth),
            None => skip(b, &mut i, tag, wire, depth),
        };
        if ok.is_none() {
            return false;
        }
    }
    true
}

fn field(b: &[u8], i: &mut usize, wire: u64, kind: Kind, depth: u32) -> Option<()> {
    match (kind, wire) {
        (Kind::Varint | Kind::PackedVarint, VARINT) => varint(b, i).map(drop),
        (Kind::I32 | Kind::PackedI32, I32) => fixed(b, i, 4),
        (Kind::I64 | Kind::PackedI64, I64) => fixed(b, i, 8),
        (Kind::PackedVarint, LEN) => {
            let s = delimited(b, i)?;
            let mut j = 0;
            while j < s.len() {
                varint(s, &mut j)?;
            }
            Some(())
        }
        (Kind::PackedI32, LEN) => (delimited(b, i)?.len() % 4 == 0).then_some(()),
        (Kind::PackedI64, LEN) => (delimited(b, i)?.len() % 8 == 0).then_some(()),
        (Kind::Str, LEN) => utf8(delimited(b, i)?).then_some(()),
        (Kind::Bytes, LEN) => delimited(b, i).map(drop),
        (Kind::Msg(m), LEN) if depth > 0 => valid(delimited(b, i)?, m, depth - 1).then_some(()),
        _ => None,
    }
}

/// Skips a field this build does not know, as the decoder does.
fn skip(b: &[u8], i: &mut usize, tag: u32, wire: u64, depth: u32) -> Option<()> {
    if depth == 0 {
        return None;
    }
    match wire {
        VARINT => varint(b, i).map(drop),
        I64 => fixed(b, i, 8),
        I32 => fixed(b, i, 4),
        LEN => delimited(b, i).map(drop),
        START_GROUP => loop {
            let (inner, w) = key(b, i)?;
            if w == END_GROUP {
                return (inner == tag).then_some(());
            }
            skip(b, i, inner, w, depth - 1)?;
        },
        _ => None,
    }
}

/// What ingest needs of a record, read on the wire.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Light<'a> {
    pub(crate) kind: Option<MessageKind>,
    /// `Event.event_type` of an `event` record, else 0.
    pub(crate) event_type: i32,
    pub(crate) thread: &'a str,
    pub(crate) tenant: &'a str,
    pub(crate) timestamp_us: i64,
    pub(crate) sequence: u64,
    /// As written (0 is read as 1).
    pub(crate) schema_version: u32,
}

fn kind_of(field: u32) -> Option<MessageKind> {
    Some(match field {
        1 => MessageKind::Event,
        2 => MessageKind::StateDiff,
        3 => MessageKind::TokenChunk,
        4 => MessageKind::ToolExecution,
        5 => MessageKind::Checkpoint,
        6 => MessageKind::Metrics,
        7 => MessageKind::Error,
        8 => MessageKind::EventBatch,
        9 => MessageKind::ExecutionTrace,
        _ => return None,
    })
}

/// The body's [`Light`] view when the full decode would accept it and pass
/// its checks (schema version, id lengths), and its shape is the usual one:
/// one body, not a batch, at most one header. `None` leaves the record to
/// the full decode, which gives the verdict (and the error, if any).
///
/// One pass: the levels it reads (the record, its body, the body's header)
/// are checked as they are read, everything below them by [`valid`].
pub(crate) fn light(b: &[u8]) -> Option<Light<'_>> {
    let mut out = Light::default();
    // The record: one body message, and fields this build does not know.
    let mut body: Option<(&[u8], usize)> = None;
    let mut i = 0;
    while i < b.len() {
        let (tag, wire) = key(b, &mut i)?;
        match MESSAGES[ROOT].iter().find(|(n, _)| *n == tag) {
            Some((_, Kind::Msg(m))) if wire == LEN && body.is_none() => {
                out.kind = kind_of(tag);
                body = Some((delimited(b, &mut i)?, *m));
            }
            // A second body (the decoder's merge rules decide) or a wrong wire type.
            Some(_) => return None,
            None => skip(b, &mut i, tag, wire, RECURSION_LIMIT)?,
        }
    }
    let (b, m) = body?;
    if out.kind == Some(MessageKind::EventBatch) {
        return None;
    }
    let depth = RECURSION_LIMIT - 1;
    let mut header: Option<(&[u8], usize)> = None;
    let mut i = 0;
    while i < b.len() {
        let (tag, wire) = key(b, &mut i)?;
        match (MESSAGES[m].iter().find(|(n, _)| *n == tag), tag, wire) {
            (Some((_, Kind::Msg(h))), 1, LEN) if header.is_none() => {
                header = Some((delimited(b, &mut i)?, *h));
            }
            (_, 1, _) => return None,
            (Some(_), 2, VARINT) if out.kind == Some(MessageKind::Event) => {
                out.event_type = varint(b, &mut i)? as i32;
            }
            (Some((_, kind)), _, _) => field(b, &mut i, wire, *kind, depth)?,
            (None, _, _) => skip(b, &mut i, tag, wire, depth)?,
        }
    }
    if let Some((b, h)) = header {
        let depth = depth - 1;
        let mut i = 0;
        while i < b.len() {
            let (tag, wire) = key(b, &mut i)?;
            match (tag, wire) {
                (2, VARINT) => out.timestamp_us = varint(b, &mut i)? as i64,
                (3, LEN) => out.tenant = text(b, &mut i)?,
                (4, LEN) => out.thread = text(b, &mut i)?,
                (5, VARINT) => out.sequence = varint(b, &mut i)?,
                (9, VARINT) => out.schema_version = varint(b, &mut i)? as u32,
                _ => match MESSAGES[h].iter().find(|(n, _)| *n == tag) {
                    Some((_, kind)) => field(b, &mut i, wire, *kind, depth)?,
                    None => skip(b, &mut i, tag, wire, depth)?,
                },
            }
        }
    }
    let checked = out.schema_version.max(1) <= SUPPORTED_SCHEMA_VERSION
        && out.thread.len() <= MAX_ID_BYTES
        && out.tenant.len() <= MAX_ID_BYTES;
    checked.then_some(out)
}

#[cfg(test)]
mod tests;
