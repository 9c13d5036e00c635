//! Replay slots: at most `REPLAY_MAX_CONCURRENT` replays read at once. A
//! replay keeps its slot from page to page while its client takes pages
//! promptly and gives it back once a page has been going out for too long
//! (`replay::driver::SLOW_PAGE`): a client that reads slowly holds no slot
//! while it reads. The rest wait their turn in arrival order and are told so
//! (`replay_queued`) when the wait is not short.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::record::frame::control;
use crate::replay::out::{Gone, ReplayOut};
use crate::telemetry;

/// A slot free within this time needs no notice.
const QUIET_WAIT: Duration = Duration::from_millis(100);
/// While a replay waits for a slot it is told so, and then again at this
/// interval, so a client that watches for silence does not give up its turn.
const QUEUED_NOTICE_EVERY: Duration = Duration::from_secs(5);

/// The replay slots, how many replays run and how many wait for a slot.
pub(crate) struct ReplaySlots {
    permits: Semaphore,
    max: usize,
    active: AtomicUsize,
    waiting: AtomicUsize,
}

/// A replay slot.
pub(crate) struct ReplaySlot<'a> {
    _permit: tokio::sync::SemaphorePermit<'a>,
}

/// A replay (resume or catch-up) running, counted in `replay_sessions_active`
/// until dropped.
pub(crate) struct Replaying<'a> {
    _active: Counted<'a>,
}

impl ReplaySlots {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            permits: Semaphore::new(max),
            max,
            active: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
        }
    }

    /// A replay starts (counted; it takes a slot to read).
    pub(crate) fn enter(&self) -> Replaying<'_> {
        Replaying {
            _active: Counted::enter(&self.active, telemetry::REPLAY_ACTIVE),
        }
    }

    #[cfg(test)]
    /// Slots free now.
    pub(crate) fn free(&self) -> usize {
        self.permits.available_permits()
    }

    /// Takes a slot; while none is free (after a short quiet
    /// wait), sends `replay_queued` notices. `Err`: the client went away.
    pub(crate) async fn acquire<O: ReplayOut>(&self, out: &mut O) -> Result<ReplaySlot<'_>, Gone> {
        if let Ok(p) = self.permits.try_acquire() {
            return Ok(ReplaySlot { _permit: p });
        }
        // Counted as waiting until this returns or is dropped (shutdown).
        let _waiting = Counted::enter(&self.waiting, telemetry::REPLAY_WAITING);
        let acquire = self.permits.acquire();
        tokio::pin!(acquire);
        let mut nap = QUIET_WAIT;
        loop {
            tokio::select! {
                p = &mut acquire => return Ok(ReplaySlot { _permit: p.map_err(|_| Gone)? }),
                _ = tokio::time::sleep(nap) => {}
            }
            let waiting = self.waiting.load(Ordering::Relaxed);
            out.control(control::replay_queued(waiting, self.max))
                .await?;
            out.flush().await?;
            nap = QUEUED_NOTICE_EVERY;
        }
    }
}

/// Counted in `count` and in the gauge `name` while it lives (every exit path).
struct Counted<'a>(&'a AtomicUsize, metrics::Gauge);

impl<'a> Counted<'a> {
    fn enter(count: &'a AtomicUsize, name: &'static str) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        let g = metrics::gauge!(name);
        g.increment(1.0);
        Self(count, g)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
        self.1.decrement(1.0);
    }
}
