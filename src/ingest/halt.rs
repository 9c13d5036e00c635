//! Halted threads (`GAP_POLICY=halt`): a thread with a sequence gap stops
//! being delivered; its records are held, in order, up to
//! `HALT_MAX_HELD_MESSAGES`, until an operator releases the thread
//! (`POST /admin/threads/{id}/resume`). A held record's offset is held in the
//! [`OffsetBook`] too, so the commit point never passes it.
//!
//! Bounded whatever producers send: at most `HALT_MAX_THREADS` threads are
//! halted at once (a gap on a further thread is counted and delivered, as
//! under `warn`), and at most `HALT_MAX_HELD_BYTES` are held in all (beyond
//! it a record is not held: its DLQ copy is the only one, as when its
//! thread's buffer is full).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::ingest::offsets::OffsetBook;
use crate::ingest::status::HaltedThread;
use crate::record::frame::Frame;
use crate::record::summary::Summary;

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

/// How far halts may go.
#[derive(Clone, Copy, Debug)]
pub(crate) struct HaltLimits {
    /// Records held per halted thread.
    pub(crate) max_held: usize,
    pub(crate) max_threads: usize,
    /// Bytes held in all (each frame's `base_bytes`: held frames are never encoded).
    pub(crate) max_held_bytes: usize,
}

pub(crate) struct Halts {
    threads: HashMap<Box<str>, Halt>,
    limits: HaltLimits,
    held: usize,
    held_bytes: usize,
}

/// `HALT_MAX_THREADS` threads are halted: this one is not.
pub(crate) struct TooManyHalts;

impl Halts {
    pub(crate) fn new(limits: HaltLimits) -> Self {
        Self {
            threads: HashMap::new(),
            limits,
            held: 0,
            held_bytes: 0,
        }
    }

    /// Records and bytes held in all.
    pub(crate) fn held(&self) -> (usize, usize) {
        (self.held, self.held_bytes)
    }

    pub(crate) fn halted_threads(&self) -> usize {
        self.threads.len()
    }

    /// What `/admin` shows of one halted thread.
    pub(crate) fn info(&self, thread: &str) -> Option<&HaltedThread> {
        self.threads.get(thread).map(|h| &h.info)
    }

    pub(crate) fn is_halted(&self, thread: &str) -> bool {
        self.threads.contains_key(thread)
    }

    /// Halts `thread` (already halted: nothing changes).
    pub(crate) fn halt(
        &mut self,
        thread: String,
        tenant: &str,
        missing: u64,
        at_sequence: u64,
    ) -> Result<(), TooManyHalts> {
        if self.is_halted(&thread) {
            return Ok(());
        }
        if self.threads.len() >= self.limits.max_threads {
            return Err(TooManyHalts);
        }
        self.threads.insert(
            thread.clone().into_boxed_str(),
            Halt {
                info: HaltedThread {
                    thread_id: thread,
                    tenant_id: tenant.to_string(),
                    held_messages: 0,
                    dropped_messages: 0,
                    missing,
                    at_sequence,
                    halted_at_unix_ms: crate::util::unix_ms(),
                },
                held: VecDeque::new(),
            },
        );
        Ok(())
    }

    /// The halted thread `frame` belongs to (its own, or one of a batch's events).
    pub(crate) fn thread_of(&self, summary: &Summary) -> Option<String> {
        if self.threads.is_empty() {
            return None;
        }
        summary
            .threads()
            .find(|t| self.is_halted(t))
            .map(str::to_string)
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
        let bytes = frame.base_bytes();
        if h.held.len() >= self.limits.max_held
            || self.held_bytes + bytes > self.limits.max_held_bytes
        {
            h.info.dropped_messages += 1;
            return Err(BufferFull);
        }
        offsets.hold(frame.cursor.partition, frame.cursor.offset);
        h.held.push_back(frame);
        h.info.held_messages = h.held.len();
        self.held += 1;
        self.held_bytes += bytes;
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
            self.held -= 1;
            self.held_bytes -= frame.base_bytes();
            offsets.release(frame.cursor.partition, frame.cursor.offset);
            match self.thread_of(&frame.summary) {
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
            h.held.retain(|f| {
                let keep = f.cursor.partition != partition;
                if !keep {
                    self.held -= 1;
                    self.held_bytes -= f.base_bytes();
                }
                keep
            });
            h.info.held_messages = h.held.len();
        }
    }

    /// Every halted thread (at most `HALT_MAX_THREADS`).
    pub(crate) fn all(&self) -> impl Iterator<Item = &HaltedThread> {
        self.threads.values().map(|h| &h.info)
    }
}
