//! Cleanup that survives the test process.
//!
//! `Drop` does not run for statics (the shared cluster lives in one) nor when a test binary
//! aborts, so a Postgres server or a Sentinel started by a test would outlive the run, keep its
//! port and its temp dir, and could keep CI waiting. A [`Reaper`] is a tiny `sh` loop, started
//! next to the thing it guards, that polls the test process once a second and runs a cleanup
//! script when the test process is gone. Dropping the `Reaper` (the normal path, after the owner
//! cleaned up itself) kills the loop.
//!
//! The loop runs in its own process group, so a Ctrl-C in the terminal that kills the tests does
//! not kill it too, and with stdin/stdout/stderr on /dev/null, so it never holds the test
//! runner's pipes open.

use std::ffi::OsStr;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};

use anyhow::{Context, Result};

/// Runs a cleanup script once the current process has exited; see the module docs.
#[derive(Debug)]
pub struct Reaper {
    child: Option<Child>,
}

impl Reaper {
    /// Starts the watch loop. `cleanup` is a `sh` script run after this process exits; it gets
    /// `args` as `$1`, `$2`, ... (pass paths as arguments rather than splicing them into the
    /// script, so no quoting is needed).
    pub fn spawn<I, S>(cleanup: &str, args: I) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let script = format!(
            "watched=$1; shift; \
             while kill -0 \"$watched\" 2>/dev/null; do sleep 1; done; \
             {cleanup}"
        );
        let child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg("sentinel-tests-reaper")
            .arg(std::process::id().to_string())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .context("spawning the cleanup watcher (sh)")?;
        Ok(Self { child: Some(child) })
    }

    /// Stops watching without running the cleanup (the owner cleaned up itself).
    pub fn disarm(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        self.disarm();
    }
}
