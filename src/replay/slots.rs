//! Replay slots: at most `REPLAY_MAX_CONCURRENT` replays run at once; the
//! rest wait their turn in arrival order and are told so (`replay_queued`),
//! so a storm of resumes cannot starve live delivery.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::record::frame::control;
use crate::replay::out::{Gone, ReplayOut};
use crate::telemetry;

/// While a resume waits for a slot it is told so, now and then again at this
/// interval, so a client that watches for silence does not give up its turn.
const QUEUED_NOTICE_EVERY: Duration = Duration::from_secs(5);

/// The replay slots, and how many resumes hold or wait for one.
pub(crate) struct ReplaySlots {
    permits: Semaphore,
    max: usize,
    active: AtomicUsize,
    waiting: AtomicUsize,
}

/// A replay slot, counted in `replay_sessions_active` until dropped.
pub(crate) struct ReplaySlot<'a> {
    _permit: tokio::sync::SemaphorePermit<'a>,
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

    /// Takes a slot; while none is free, sends `replay_queued` notices.
    /// `Err`: the client went away.
    pub(crate) async fn acquire<O: ReplayOut>(&self, out: &mut O) -> Result<ReplaySlot<'_>, Gone> {
        let permit = match self.permits.try_acquire() {
            Ok(p) => p,
            Err(_) => {
                // Counted as waiting until this returns or is dropped (shutdown).
                let _waiting = Counted::enter(&self.waiting, telemetry::REPLAY_WAITING);
                let acquire = self.permits.acquire();
                tokio::pin!(acquire);
                loop {
                    let waiting = self.waiting.load(Ordering::Relaxed);
                    out.control(control::replay_queued(waiting, self.max))
                        .await?;
                    out.flush().await?;
                    tokio::select! {
                        p = &mut acquire => break p.map_err(|_| Gone)?,
                        _ = tokio::time::sleep(QUEUED_NOTICE_EVERY) => {}
                    }
                }
            }
        };
        Ok(ReplaySlot {
            _permit: permit,
            _active: Counted::enter(&self.active, telemetry::REPLAY_ACTIVE),
        })
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
