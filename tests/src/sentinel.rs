//! Sentinel as a child process.
//!
//! Sentinel's server owns signal handling and exits the process (pingora's `run_forever`), and
//! the point of these tests is the binary as shipped, so each test runs `sentinel run --config
//! <file>` as a child: config in a temp file, stdout and stderr captured to a file that tests can
//! read ([`SentinelProcess::logs`]), killed when the handle drops (and by a [`Reaper`] should the
//! test process die first).
//!
//! The other commands of the binary (`sentinel keys …`, `sentinel seal`, `sentinel token issue`,
//! …) run to completion with [`run_sentinel`]. Neither path lets a `SENTINEL_MASTER_KEY` of the
//! test process through: the child gets exactly the master key the test gives it.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tempfile::TempDir;

use crate::config::MASTER_KEY_ENV;
pub use crate::config::{Auth, PoolMode, SentinelConfig};
use crate::reaper::Reaper;

/// How long Sentinel may take to accept TCP connections on its Postgres port.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a `sentinel` command run by [`run_sentinel`] may take.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(60);

/// What a finished `sentinel` command printed, and how it exited.
#[derive(Debug)]
pub struct CliOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl CliOutput {
    /// Exit status 0.
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// The exit code (`None` when killed by a signal).
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// stdout and stderr together, for assertions on "anything it printed".
    pub fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }

    /// Fails with everything the command printed unless it exited 0.
    pub fn ok(self) -> Result<Self> {
        if self.success() {
            Ok(self)
        } else {
            bail!(
                "sentinel exited with {}:\nstdout:\n{}\nstderr:\n{}",
                self.status,
                self.stdout,
                self.stderr
            )
        }
    }
}

/// Runs the sentinel binary (see [`sentinel_binary`]) with `args` and `env` (and no inherited
/// `SENTINEL_MASTER_KEY`), feeding it `stdin`, and waits for it to exit (at most
/// [`CLI_TIMEOUT`]). E.g. `run_sentinel(&["keys", "check", "--config", path], &env, None)`.
pub async fn run_sentinel<S: AsRef<std::ffi::OsStr>>(
    args: &[S],
    env: &[(&str, &str)],
    stdin: Option<&[u8]>,
) -> Result<CliOutput> {
    use tokio::io::AsyncWriteExt as _;
    let bin = sentinel_binary()?;
    let mut cmd = tokio::process::Command::new(&bin);
    cmd.args(args)
        .env_remove(MASTER_KEY_ENV)
        .env("NO_COLOR", "1")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("spawning {}", bin.display()))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A command that refuses before reading its input closes stdin first: what it printed
        // and its exit status are the result, not the broken pipe.
        match pipe.write_all(input).await {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
            other => other.context("writing to stdin")?,
        }
        drop(pipe);
    }
    let out = tokio::time::timeout(CLI_TIMEOUT, child.wait_with_output())
        .await
        .with_context(|| format!("sentinel did not exit within {CLI_TIMEOUT:?}"))?
        .context("waiting for sentinel")?;
    Ok(CliOutput {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// A port that was free a moment ago on 127.0.0.1 (bind to port 0, read it, close). Another
/// process may grab it before ours binds it; that is rare enough for tests. Panics if no port
/// can be bound at all, which means the machine is unusable for these tests anyway.
pub fn free_port() -> u16 {
    try_free_port().expect("binding 127.0.0.1:0 to find a free port")
}

/// [`free_port`] without the panic.
pub fn try_free_port() -> std::io::Result<u16> {
    let listener = TcpListener::bind(("127.0.0.1", 0))?;
    Ok(listener.local_addr()?.port())
}

/// The `sentinel` binary: `$SENTINEL_BIN`, else `sentinel` in the `target/<profile>/` directory
/// this test executable was built into.
pub fn sentinel_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the test executable")?;
    locate_sentinel_binary(std::env::var_os("SENTINEL_BIN").map(PathBuf::from), &exe)
}

/// The logic of [`sentinel_binary`], given the `SENTINEL_BIN` value and the test executable.
/// Test executables live in `target/<profile>/deps/` (or `examples/`); the binary in
/// `target/<profile>/`.
pub fn locate_sentinel_binary(env_override: Option<PathBuf>, test_exe: &Path) -> Result<PathBuf> {
    if let Some(path) = env_override {
        if path.is_file() {
            return Ok(path);
        }
        bail!(
            "SENTINEL_BIN={} is not a file: build it with `cargo build -p sentinel` or unset \
             SENTINEL_BIN",
            path.display()
        );
    }
    let mut dir = test_exe
        .parent()
        .with_context(|| format!("{} has no parent directory", test_exe.display()))?;
    if dir
        .file_name()
        .is_some_and(|n| n == "deps" || n == "examples")
        && let Some(parent) = dir.parent()
    {
        dir = parent;
    }
    let bin = dir.join("sentinel");
    if bin.is_file() {
        Ok(bin)
    } else {
        bail!(
            "the sentinel binary is not built: {} does not exist. Run `cargo build -p sentinel` \
             (with the same profile and CARGO_TARGET_DIR as the tests) or set SENTINEL_BIN",
            bin.display()
        )
    }
}

/// A running `sentinel run`; dropping it kills the process.
#[derive(Debug)]
pub struct SentinelProcess {
    child: tokio::process::Child,
    pid: u32,
    exited: Option<ExitStatus>,
    addr: SocketAddr,
    config_path: PathBuf,
    log_path: PathBuf,
    reaper: Reaper,
    /// Holds the config and the log; removed on drop.
    dir: TempDir,
}

impl SentinelProcess {
    /// Runs the sentinel binary (see [`sentinel_binary`]) with this config and extra environment
    /// variables, and waits until its Postgres port (`[postgres] listen`) accepts TCP.
    pub async fn start(config_toml: &str, env: &[(&str, &str)]) -> Result<Self> {
        let bin = sentinel_binary()?;
        Self::start_binary(&bin, config_toml, env).await
    }

    /// [`start`](Self::start) with a [`SentinelConfig`] and the environment it lists (which
    /// holds its master keyring).
    pub async fn start_with(cfg: &SentinelConfig) -> Result<Self> {
        Self::start(&cfg.render(), &cfg.env_pairs()).await
    }

    /// [`start`](Self::start) with an explicit binary (the harness's own tests use a stand-in).
    /// The binary gets `run --config <file>`, and `SENTINEL_MASTER_KEY` only if `env` has it.
    pub async fn start_binary(bin: &Path, config_toml: &str, env: &[(&str, &str)]) -> Result<Self> {
        let mut process = Self::spawn(bin, config_toml, &[], env)?;
        process.wait_listening().await?;
        Ok(process)
    }

    /// Starts a second Sentinel with this one's config and `run --upgrade`: it takes the
    /// listening sockets over `[process] upgrade_socket` once this one is sent SIGQUIT. Returns
    /// at once (the sockets are still this one's).
    pub fn start_upgrade(&self, env: &[(&str, &str)]) -> Result<Self> {
        let config = std::fs::read_to_string(&self.config_path)?;
        Self::spawn(&sentinel_binary()?, &config, &["--upgrade"], env)
    }

    fn spawn(bin: &Path, config_toml: &str, args: &[&str], env: &[(&str, &str)]) -> Result<Self> {
        let addr = listen_addr(config_toml)?;
        let dir = tempfile::Builder::new()
            .prefix("sentinel-run-")
            .tempdir()
            .context("creating a temp dir for the Sentinel config and log")?;
        let config_path = dir.path().join("sentinel.toml");
        let log_path = dir.path().join("sentinel.log");
        std::fs::write(&config_path, config_toml).context("writing the Sentinel config")?;
        let log = std::fs::File::create(&log_path).context("creating the Sentinel log file")?;
        let log2 = log.try_clone().context("duplicating the log file handle")?;

        let mut cmd = tokio::process::Command::new(bin);
        cmd.arg("run")
            .args(args)
            .arg("--config")
            .arg(&config_path)
            .env_remove(MASTER_KEY_ENV)
            .env("NO_COLOR", "1")
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {}", bin.display()))?;
        let pid = child.id().context("the Sentinel child has no pid")?;
        let reaper = Reaper::spawn(
            "kill -KILL \"$1\" 2>/dev/null; rm -rf \"$2\"",
            [pid.to_string().into(), dir.path().as_os_str().to_owned()],
        )?;
        Ok(Self {
            child,
            pid,
            exited: None,
            addr,
            config_path,
            log_path,
            reaper,
            dir,
        })
    }

    async fn wait_listening(&mut self) -> Result<()> {
        let started = Instant::now();
        loop {
            if let Some(status) = self
                .child
                .try_wait()
                .context("polling the Sentinel child")?
            {
                self.exited = Some(status);
                bail!(
                    "sentinel exited ({status}) before accepting connections on {}; its output:\n{}",
                    self.addr,
                    self.logs()
                );
            }
            let attempt = tokio::time::timeout(
                Duration::from_millis(500),
                tokio::net::TcpStream::connect(self.addr),
            )
            .await;
            if let Ok(Ok(_stream)) = attempt {
                return Ok(());
            }
            if started.elapsed() > START_TIMEOUT {
                bail!(
                    "sentinel did not accept connections on {} within {START_TIMEOUT:?}; its output:\n{}",
                    self.addr,
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The Postgres listen address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The Postgres listen port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The config file the process was started with.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The directory holding the config and the log (e.g. for a spool dir a test configures).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Everything the process wrote to stdout and stderr so far.
    pub fn logs(&self) -> String {
        std::fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Prints the last `lines` lines of the logs to stderr, headed by `name`. For a test's
    /// fixture to call when it drops: the test harness shows stderr only when the test fails.
    pub fn print_log_tail(&self, name: &str, lines: usize) {
        let logs = self.logs();
        let tail: Vec<&str> = logs.lines().rev().take(lines).collect();
        eprintln!("--- last {name} log lines ---");
        for line in tail.iter().rev() {
            eprintln!("{line}");
        }
    }

    /// Waits until the logs contain `needle`; fails with the logs after `timeout`.
    pub async fn wait_for_log(&self, needle: &str, timeout: Duration) -> Result<()> {
        let started = Instant::now();
        loop {
            let logs = self.logs();
            if logs.contains(needle) {
                return Ok(());
            }
            if started.elapsed() > timeout {
                bail!("sentinel did not log {needle:?} within {timeout:?}; its output:\n{logs}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A tokio-postgres / libpq connection string to Sentinel's Postgres port.
    pub fn dsn(&self, user: &str, password: &str, db: &str) -> String {
        crate::clients::dsn(&self.addr.ip().to_string(), self.port(), user, password, db)
    }

    /// Sends a signal (e.g. `libc::SIGTERM`, `libc::SIGHUP`) to the process. Refused once the
    /// process has been seen to exit, since its pid may belong to someone else by then.
    pub fn signal(&self, sig: libc::c_int) -> Result<()> {
        if let Some(status) = self.exited {
            bail!(
                "sentinel already exited ({status}); not signalling pid {}",
                self.pid
            );
        }
        let signal = rustix::process::Signal::from_named_raw(sig)
            .with_context(|| format!("unknown signal number {sig}"))?;
        let pid = i32::try_from(self.pid)
            .ok()
            .and_then(rustix::process::Pid::from_raw)
            .with_context(|| format!("invalid pid {}", self.pid))?;
        rustix::process::kill_process(pid, signal)
            .with_context(|| format!("sending signal {sig} to sentinel (pid {})", self.pid))
    }

    /// Waits for the process to exit; fails (with the logs) if it is still running after
    /// `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        if let Some(status) = self.exited {
            return Ok(status);
        }
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(status) => {
                let status = status.context("waiting for the Sentinel child")?;
                self.exited = Some(status);
                Ok(status)
            }
            Err(_) => bail!(
                "sentinel (pid {}) still running after {timeout:?}; its output:\n{}",
                self.pid,
                self.logs()
            ),
        }
    }

    /// Whether the process is still running (reaps it if it exited).
    pub fn is_running(&mut self) -> bool {
        if self.exited.is_some() {
            return false;
        }
        match self.child.try_wait() {
            Ok(Some(status)) => {
                self.exited = Some(status);
                false
            }
            Ok(None) => true,
            Err(_) => false,
        }
    }

    /// Kills the process (SIGKILL) and waits for it.
    pub async fn kill(&mut self) -> Result<()> {
        if self.exited.is_none() {
            self.child.kill().await.context("killing sentinel")?;
            self.exited = self.child.try_wait().ok().flatten();
        }
        Ok(())
    }
}

impl Drop for SentinelProcess {
    fn drop(&mut self) {
        // The child itself is killed by `kill_on_drop`; the watcher is no longer needed.
        self.reaper.disarm();
    }
}

/// `[postgres] listen` of a config (default `127.0.0.1:6432`, as in the example config).
fn listen_addr(config_toml: &str) -> Result<SocketAddr> {
    let table: toml::Table =
        toml::from_str(config_toml).context("the Sentinel config is not valid TOML")?;
    let listen = table
        .get("postgres")
        .and_then(|p| p.get("listen"))
        .and_then(|l| l.as_str())
        .unwrap_or("127.0.0.1:6432");
    let addr: SocketAddr = listen
        .parse()
        .with_context(|| format!("[postgres] listen = {listen:?} is not an ip:port"))?;
    if addr.port() == 0 {
        bail!("[postgres] listen has port 0: the harness needs a concrete port (use free_port())");
    }
    Ok(addr)
}
