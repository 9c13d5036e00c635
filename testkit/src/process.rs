//! A child process whose stdout and stderr go to a log file, killed (and
//! reaped) when dropped, so a failing test or benchmark leaves nothing behind.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Logged {
    pub child: Child,
    pub log: PathBuf,
}

impl Logged {
    /// Spawns `cmd` with its output appended to `log`.
    pub fn spawn(cmd: &mut Command, log: &Path) -> std::io::Result<Self> {
        let out = std::fs::File::create(log)?;
        let err = out.try_clone()?;
        let child = cmd
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()?;
        Ok(Self {
            child,
            log: log.to_path_buf(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends signal `sig` (`TERM`, `KILL`, `STOP`, …) with kill(1).
    pub fn signal(&self, sig: &str) -> std::io::Result<()> {
        let st = Command::new("kill")
            .args(["-s", sig, &self.child.id().to_string()])
            .status()?;
        if st.success() {
            Ok(())
        } else {
            Err(std::io::Error::other(format!("kill -s {sig} failed: {st}")))
        }
    }

    /// Waits up to `limit` for the process to exit; its status, or `None`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let t0 = Instant::now();
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            if t0.elapsed() > limit {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Resident memory (VmRSS) of `pid`, in KiB; 0 when unreadable.
pub fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}
