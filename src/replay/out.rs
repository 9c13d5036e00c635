//! Where a replay writes: the session's socket (`session::socket`), or a
//! recorder in tests.

use std::future::Future;

use crate::record::frame::Frame;

/// The client went away (a write failed or timed out).
#[derive(Debug)]
pub(crate) struct Gone;

/// Where a replay writes: the session's socket (in the client's format), or
/// a recorder in tests. Writes are buffered until [`ReplayOut::flush`].
pub(crate) trait ReplayOut: Send {
    /// Buffers one data frame.
    fn frame(&mut self, f: &Frame) -> impl Future<Output = Result<(), Gone>> + Send;
    /// Buffers one control frame (`gap`, `replay_queued`).
    fn control(&mut self, text: String) -> impl Future<Output = Result<(), Gone>> + Send;
    /// Writes out what was buffered.
    fn flush(&mut self) -> impl Future<Output = Result<(), Gone>> + Send;
    /// Buffers one data frame if that takes no wait: `false` when the
    /// client's socket is full (nothing written; the caller lets go of what
    /// it holds, then waits in [`ReplayOut::ready`]).
    fn try_frame(&mut self, f: &Frame) -> impl Future<Output = Result<bool, Gone>> + Send {
        async move { self.frame(f).await.map(|()| true) }
    }
    /// Waits (bounded like every write) until a frame can be buffered.
    fn ready(&mut self) -> impl Future<Output = Result<(), Gone>> + Send {
        async { Ok(()) }
    }
}
