//! Halted threads (`GAP_POLICY=halt`): a thread with a sequence gap stops
//! being delivered; its records are held, in order, up to
//! `HALT_MAX_HELD_MESSAGES`, until an operator releases the thread
//! (`POST /admin/threads/{id}/resume`). A held record's offset is held in the
//! [`OffsetBook`] too, so the commit point never passes it.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::ingest::offsets::OffsetBook;
use crate::ingest::status::HaltedThread;
use crate::record::frame::Frame;

struct Halt {
    info: HaltedThread,
    held: VecDeque<Arc<Frame>>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub(crate) enum ReleaseError {
    #[error("thread '{0}' is not halted")]
    NotHalted(String),
}

/// The thread's buffer is full: the record is not held (its DLQ copy is the only one).
pub(crate) struct BufferFull;

pub(crate) struct Halts {
    threads: HashMap<Box<str>, Halt>,
    max_held: usize,
}

impl Halts {
    pub(crate) fn new(max_held: usize) -> Self {
        Self {
            threads: HashMap::new(),
            max_held,
        }
    }

    pub(crate) fn is_halted(&self, thread: &str) -> bool {
        self.threads.contains_key(thread)
    }

    /// Halts `thread` (already halted: nothing changes).
    pub(crate) fn halt(&mut self, thread: String, missing: u64, at_sequence: u64) {
        if self.is_halted(&thread) {
            return;
        }
        self.threads.insert(
            thread.clone().into_boxed_str(),
            Halt {
                info: HaltedThread {
                    thread_id: thread,
                    held_messages: 0,
                    dropped_messages: 0,
                    missing,
                    at_sequence,
                    halted_at_unix_ms: crate::util::unix_ms(),
                },
                held: VecDeque::new(),
            },
        );
    }

    /// The halted thread `frame` belongs to (its own, or one of a batch's events).
    pub(crate) fn thread_of(&self, frame: &Frame) -> Option<String> {
        if self.threads.is_empty() {
            return None;
        }
        let d = &frame.decoded;
        if self.is_halted(d.thread_id()) {
            return Some(d.thread_id().to_string());
        }
        d.batch_events()
            .iter()
            .filter_map(|e| e.header.as_ref())
            .find(|h| self.is_halted(h.thread_id.as_str()))
            .map(|h| h.thread_id.clone())
    }

    /// Holds `frame` for its halted `thread` and holds its offset.
    pub(crate) fn hold(
        &mut self,
        thread: &str,
        frame: Arc<Frame>,
        offsets: &mut OffsetBook,
    ) -> Result<(), BufferFull> {
        let Some(h) = self.threads.get_mut(thread) else {
            return Err(BufferFull);
        };
        if h.held.len() >= self.max_held {
            h.info.dropped_messages += 1;
            return Err(BufferFull);
        }
        offsets.hold(frame.cursor.partition, frame.cursor.offset);
        h.held.push_back(frame);
        h.info.held_messages = h.held.len();
        Ok(())
    }

    /// Releases `thread`: its held records, in order, with their offsets let
    /// go; a record that also involves another still-halted thread moves to
    /// that thread's buffer instead.
    pub(crate) fn release(
        &mut self,
        thread: &str,
        offsets: &mut OffsetBook,
    ) -> Result<Vec<Arc<Frame>>, ReleaseError> {
        let halt = self
            .threads
            .remove(thread)
            .ok_or_else(|| ReleaseError::NotHalted(thread.to_string()))?;
        let mut released = Vec::with_capacity(halt.held.len());
        for frame in halt.held {
            offsets.release(frame.cursor.partition, frame.cursor.offset);
            match self.thread_of(&frame) {
                Some(other) => {
                    let _ = self.hold(&other, frame, offsets);
                }
                None => released.push(frame),
            }
        }
        Ok(released)
    }

    /// Drops the held records of a revoked partition (the next owner re-reads them).
    pub(crate) fn forget_partition(&mut self, partition: i32) {
        for h in self.threads.values_mut() {
            h.held.retain(|f| f.cursor.partition != partition);
            h.info.held_messages = h.held.len();
        }
    }

    /// The halted threads, sorted by id, and the records held in all.
    pub(crate) fn summary(&self) -> (Vec<HaltedThread>, usize) {
        let mut v: Vec<HaltedThread> = self.threads.values().map(|h| h.info.clone()).collect();
        v.sort_by(|a, b| a.thread_id.cmp(&b.thread_id));
        let held = self.threads.values().map(|h| h.held.len()).sum();
        (v, held)
    }
}
