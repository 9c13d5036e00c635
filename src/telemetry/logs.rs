//! Log lines never block the task that logs them: each formatted line goes
//! into a bounded queue drained by one writer thread. When stdout is slower
//! than the bridge logs (a stuck pipe, a slow collector), new lines are
//! dropped and counted in `websocket_log_lines_dropped_total` instead of
//! stalling ingest or a session.

use std::io::Write;
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

use crate::telemetry;

/// Lines waiting for the writer thread, at most.
pub(crate) const BUFFER_LINES: usize = 16_384;

enum Msg {
    Line(Vec<u8>),
    Flush,
}

/// The `MakeWriter` the log subscriber writes through.
#[derive(Clone)]
pub(crate) struct NonBlocking {
    tx: SyncSender<Msg>,
}

/// Flushes what is queued when dropped (at exit), waiting at most a second.
pub(crate) struct LogGuard {
    tx: SyncSender<Msg>,
    flushed: Receiver<()>,
}

/// Starts the writer thread over `out` (stdout in the bridge).
pub(crate) fn non_blocking(
    mut out: impl Write + Send + 'static,
    lines: usize,
) -> (NonBlocking, LogGuard) {
    let (tx, rx) = mpsc::sync_channel::<Msg>(lines);
    let (done_tx, done_rx) = mpsc::sync_channel(1);
    let spawned = std::thread::Builder::new()
        .name("log-writer".into())
        .spawn(move || {
            for msg in rx {
                match msg {
                    Msg::Line(l) => {
                        let _ = out.write_all(&l);
                    }
                    Msg::Flush => {
                        let _ = out.flush();
                        let _ = done_tx.try_send(());
                    }
                }
            }
        });
    if let Err(e) = spawned {
        eprintln!("log writer thread could not start: {e}");
    }
    (
        NonBlocking { tx: tx.clone() },
        LogGuard {
            tx,
            flushed: done_rx,
        },
    )
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        if self.tx.send(Msg::Flush).is_ok() {
            let _ = self.flushed.recv_timeout(Duration::from_secs(1));
        }
    }
}

/// One event's writer: the formatter writes the whole line, then it is queued.
pub(crate) struct Line<'a> {
    tx: &'a SyncSender<Msg>,
    buf: Vec<u8>,
}

impl Write for Line<'_> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Line<'_> {
    fn drop(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let line = std::mem::take(&mut self.buf);
        match self.tx.try_send(Msg::Line(line)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                metrics::counter!(telemetry::LOG_LINES_DROPPED).increment(1);
            }
        }
    }
}

impl<'a> MakeWriter<'a> for NonBlocking {
    type Writer = Line<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        Line {
            tx: &self.tx,
            buf: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    /// A stdout that blocks until opened.
    struct Stuck(Arc<AtomicBool>, Arc<parking_lot::Mutex<Vec<u8>>>);

    impl Write for Stuck {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            while !self.0.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(5));
            }
            self.1.lock().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stuck_stdout_never_blocks_the_logger_and_drops_are_counted() {
        let recorder = metrics_util::debugging::DebuggingRecorder::new();
        let snap = recorder.snapshotter();
        let gate = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let (w, guard) = non_blocking(Stuck(gate.clone(), seen.clone()), 8);
        metrics::with_local_recorder(&recorder, || {
            let started = std::time::Instant::now();
            for i in 0..1000 {
                let mut line = w.make_writer();
                writeln!(line, "line {i}").unwrap();
            }
            // Nothing waited on the stuck writer (it holds at most one line).
            assert!(started.elapsed() < Duration::from_secs(2));
        });
        let dropped: u64 = telemetry::test_counters(&snap, telemetry::LOG_LINES_DROPPED)
            .iter()
            .map(|(_, n)| n)
            .sum();
        assert!((1000 - 8 - 1..=1000 - 8).contains(&dropped), "{dropped}");
        // Released, the writer drains what was queued, in order.
        gate.store(true, Ordering::SeqCst);
        drop(guard);
        let text = String::from_utf8(seen.lock().clone()).unwrap();
        assert!(text.starts_with("line 0\nline 1\n"), "{text}");
    }

    #[test]
    fn an_id_with_a_newline_cannot_forge_a_log_line() {
        let open = Arc::new(AtomicBool::new(true));
        let seen = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let (w, guard) = non_blocking(Stuck(open, seen.clone()), 8);
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(w)
            .finish();
        let thread = "t\n2026-01-01T00:00:00Z ERROR forged";
        tracing::subscriber::with_default(subscriber, || {
            // How ids from records are logged: Debug, which escapes.
            tracing::warn!(thread_id = ?thread, "sequence gap");
        });
        drop(guard);
        let text = String::from_utf8(seen.lock().clone()).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.contains(r#"thread_id="t\n2026"#), "{text}");
    }
}
