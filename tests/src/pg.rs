//! A throwaway Postgres 15 cluster.
//!
//! Black-box tests need a real Postgres: Sentinel's whole job is to stand between a client and a
//! server, and the only trustworthy oracle for "what would Postgres have said" is Postgres. Each
//! [`PgCluster`] is a fresh `initdb` in a temp dir, tuned for speed (no fsync), with SCRAM auth in
//! `pg_hba.conf` (so the auth paths Sentinel speaks are the real ones), listening on 127.0.0.1 on
//! a free port with its unix socket inside the temp dir, so any number of clusters can run side
//! by side and none touches the machine's own Postgres.
//!
//! `initdb` and `postgres` refuse to run as root, so when the tests run as root (CI does) every
//! server command runs as the `postgres` OS user through `runuser`, in a temp dir that user owns.
//!
//! Starting a cluster costs about a second, so a test binary normally shares one
//! ([`shared_cluster`]) and gives each test its own role and database ([`PgCluster::test_db`]);
//! tests that stop or restart the server start their own.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use tempfile::TempDir;
use tokio_postgres::Client;

use crate::clients;
use crate::names::{conninfo_quote, quote_ident, quote_literal, random_secret, unique_name};
use crate::reaper::Reaper;
use crate::sentinel::try_free_port;

/// Where Debian's `postgresql-15` package puts the server binaries.
pub const DEFAULT_PG_BIN: &str = "/usr/lib/postgresql/15/bin";
/// The superuser every cluster is created with.
pub const SUPERUSER: &str = "postgres";
/// The OS user that runs the server when the tests run as root.
const OS_USER: &str = "postgres";
/// How long to wait for a server to accept connections after `pg_ctl start` returned.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Attempts at finding a port nobody else grabbed between our probe and the server's bind.
const PORT_ATTEMPTS: usize = 5;

/// The directory with `initdb`, `pg_ctl`, `postgres`, `psql`, `pgbench`: `$SENTINEL_PG_BIN` or
/// [`DEFAULT_PG_BIN`].
pub fn pg_bin_dir() -> PathBuf {
    std::env::var_os("SENTINEL_PG_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_PG_BIN))
}

/// Whether this process runs as root (and so must run Postgres as another user).
pub fn running_as_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// A running throwaway Postgres cluster; dropping it stops the server (immediate mode) and
/// removes its directory. Should the test process die without dropping it, a [`Reaper`] does
/// the same a second later.
#[derive(Debug)]
pub struct PgCluster {
    port: u16,
    superuser_password: String,
    data: PathBuf,
    socket_dir: PathBuf,
    log: PathBuf,
    runner: Runner,
    reaper: Reaper,
    /// Declared last: removed after the server is stopped.
    dir: TempDir,
}

/// A role and a database of the same name, owned by that role, made for one test on a (usually
/// shared) cluster.
#[derive(Debug, Clone)]
pub struct TestDb {
    /// Port of the cluster it lives on (direct, not through Sentinel).
    pub port: u16,
    /// The database name (equal to `role`).
    pub name: String,
    /// A LOGIN, NOSUPERUSER role that owns the database.
    pub role: String,
    /// The role's password (SCRAM-hashed by the server).
    pub password: String,
}

impl TestDb {
    /// A tokio-postgres / libpq connection string that connects directly to the cluster.
    pub fn dsn(&self) -> String {
        clients::dsn(
            "127.0.0.1",
            self.port,
            &self.role,
            &self.password,
            &self.name,
        )
    }

    /// Connects directly to the cluster as the role, bypassing Sentinel (the "oracle").
    pub async fn connect(&self) -> Result<Client> {
        clients::connect_dsn(&self.dsn())
            .await
            .with_context(|| format!("connecting directly as {} to {}", self.role, self.name))
    }
}

static SHARED: tokio::sync::OnceCell<PgCluster> = tokio::sync::OnceCell::const_new();

/// The cluster shared by all tests of this test binary, started on first use. It is never
/// dropped (it lives in a static); its [`Reaper`] stops it when the test process exits. Do not
/// stop or restart it: tests that need that start their own [`PgCluster`].
pub async fn shared_cluster() -> Result<&'static PgCluster> {
    SHARED
        .get_or_try_init(PgCluster::start)
        .await
        .context("starting the shared Postgres cluster")
}

impl PgCluster {
    /// `initdb`s a new cluster into a fresh temp dir, starts it on a free port and waits until it
    /// accepts connections.
    pub async fn start() -> Result<Self> {
        let bin = pg_bin_dir();
        ensure!(
            bin.join("initdb").is_file(),
            "Postgres 15 server binaries not found in {} (initdb missing): run scripts/setup.sh, \
             which installs the `postgresql` package, or point SENTINEL_PG_BIN at them",
            bin.display()
        );
        let as_os_user = running_as_root();
        let base = temp_base(as_os_user)?;
        let dir = tempfile::Builder::new()
            .prefix("sentinel-pg-")
            .tempdir_in(&base)
            .with_context(|| format!("creating a temp dir in {}", base.display()))?;
        let root = dir.path().to_path_buf();
        let data = root.join("data");
        let socket_dir = root.join("sock");
        let log = root.join("postgres.log");
        let pwfile = root.join("pwfile");
        let superuser_password = random_secret(24);

        fs::create_dir(&socket_dir).context("creating the socket dir")?;
        fs::write(&pwfile, format!("{superuser_password}\n")).context("writing the pwfile")?;
        if as_os_user {
            let (uid, gid) = os_user_ids(OS_USER)?;
            for path in [&root, &socket_dir, &pwfile] {
                std::os::unix::fs::chown(path, Some(uid), Some(gid))
                    .with_context(|| format!("chown {} to {OS_USER}", path.display()))?;
            }
        }

        let runner = Runner {
            bin,
            as_os_user,
            cwd: root.clone(),
        };
        let reaper = Reaper::spawn(
            &format!(
                "{} \"$1\" stop -D \"$2\" -m immediate -w >/dev/null 2>&1; rm -rf \"$3\"",
                if as_os_user {
                    "runuser -u postgres --"
                } else {
                    ""
                }
            ),
            [
                runner.tool("pg_ctl").into_os_string(),
                data.clone().into_os_string(),
                root.clone().into_os_string(),
            ],
        )?;

        let mut initdb = runner.command("initdb");
        initdb
            .arg("-D")
            .arg(&data)
            .arg("-U")
            .arg(SUPERUSER)
            .arg(format!("--pwfile={}", pwfile.display()))
            .args([
                "--auth-local=scram-sha-256",
                "--auth-host=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
                "--no-instructions",
            ]);
        run(initdb, "initdb").await?;
        fs::remove_file(&pwfile).context("removing the pwfile")?;
        append_settings(&data.join("postgresql.conf"), &socket_dir)?;

        let mut cluster = Self {
            port: 0,
            superuser_password,
            data,
            socket_dir,
            log,
            runner,
            reaper,
            dir,
        };
        for attempt in 1..=PORT_ATTEMPTS {
            cluster.port = try_free_port().context("finding a free port for Postgres")?;
            let log_before = cluster.log_contents().len();
            match cluster.pg_ctl_start().await {
                Ok(()) => break,
                Err(e) => {
                    let new_log = cluster.log_contents().get(log_before..).map(str::to_owned);
                    let port_taken = new_log.is_some_and(|l| l.contains("Address already in use"));
                    if !(port_taken && attempt < PORT_ATTEMPTS) {
                        return Err(e);
                    }
                }
            }
        }
        cluster.wait_ready().await?;
        Ok(cluster)
    }

    /// The TCP port the server listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The superuser's name (always [`SUPERUSER`]).
    pub fn superuser(&self) -> &str {
        SUPERUSER
    }

    /// The superuser's password.
    pub fn superuser_password(&self) -> &str {
        &self.superuser_password
    }

    /// The data directory (owned by the `postgres` OS user when running as root).
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// The directory holding the server's unix socket.
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    /// The temp dir holding everything (data, socket, log).
    pub fn root_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The server log so far (what `pg_ctl -l` captured), for failure messages.
    pub fn log_contents(&self) -> String {
        fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// A tokio-postgres / libpq connection string for the superuser over TCP.
    pub fn superuser_dsn(&self, db: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={SUPERUSER} password={} dbname={}",
            self.port,
            conninfo_quote(&self.superuser_password),
            conninfo_quote(db)
        )
    }

    /// Connects as the superuser to `db` (the connection task is spawned on the current runtime).
    pub async fn connect_superuser(&self, db: &str) -> Result<Client> {
        clients::connect_dsn(&self.superuser_dsn(db))
            .await
            .with_context(|| format!("connecting as {SUPERUSER} to {db} on port {}", self.port))
    }

    /// Creates a `LOGIN NOSUPERUSER` role with a (SCRAM-hashed) password.
    pub async fn create_role(&self, name: &str, password: &str) -> Result<()> {
        let sql = format!(
            "CREATE ROLE {} LOGIN NOSUPERUSER PASSWORD {}",
            quote_ident(name),
            quote_literal(password)
        );
        self.superuser_execute(&sql)
            .await
            .with_context(|| format!("creating role {name}"))
    }

    /// Creates a database owned by `owner`.
    pub async fn create_database(&self, name: &str, owner: &str) -> Result<()> {
        let sql = format!(
            "CREATE DATABASE {} OWNER {}",
            quote_ident(name),
            quote_ident(owner)
        );
        self.superuser_execute(&sql)
            .await
            .with_context(|| format!("creating database {name}"))
    }

    /// Creates a fresh role and a database of the same name it owns, named
    /// `<prefix>_<pid>_<n>` (so `prefix` should be a short lowercase word), with a random
    /// password. The usual way for a test to get a private corner of a shared cluster.
    pub async fn test_db(&self, prefix: &str) -> Result<TestDb> {
        let role = unique_name(prefix);
        let password = random_secret(24);
        self.create_role(&role, &password).await?;
        self.create_database(&role, &role).await?;
        Ok(TestDb {
            port: self.port,
            name: role.clone(),
            role,
            password,
        })
    }

    /// Stops the server (`pg_ctl stop -m fast`): clients are disconnected, data is kept.
    pub async fn stop(&self) -> Result<()> {
        let mut cmd = self.runner.command("pg_ctl");
        cmd.arg("stop")
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "fast", "-w", "-s"]);
        run(cmd, "pg_ctl stop").await.map(drop)
    }

    /// Starts a stopped server again, on the same data dir and port, and waits until it accepts
    /// connections. (Named so because [`PgCluster::start`] creates a cluster.)
    pub async fn start_again(&self) -> Result<()> {
        self.pg_ctl_start().await?;
        self.wait_ready().await
    }

    /// [`stop`](Self::stop) then [`start_again`](Self::start_again).
    pub async fn restart(&self) -> Result<()> {
        self.stop().await?;
        self.start_again().await
    }

    async fn superuser_execute(&self, sql: &str) -> Result<()> {
        let client = self.connect_superuser("postgres").await?;
        client.batch_execute(sql).await.context(sql.to_owned())
    }

    async fn pg_ctl_start(&self) -> Result<()> {
        let mut cmd = self.runner.command("pg_ctl");
        cmd.arg("start")
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(&self.log)
            .args(["-w", "-t", "60", "-s", "-o"])
            .arg(format!("-p {}", self.port));
        run(cmd, "pg_ctl start")
            .await
            .map(drop)
            .with_context(|| format!("server log:\n{}", self.log_contents()))
    }

    async fn wait_ready(&self) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let err = match clients::connect_dsn(&self.superuser_dsn("postgres")).await {
                Ok(client) => match client.simple_query("SELECT 1").await {
                    Ok(_) => return Ok(()),
                    Err(e) => e,
                },
                Err(e) => e,
            };
            if Instant::now() > deadline {
                bail!(
                    "Postgres on port {} did not accept connections within {READY_TIMEOUT:?}: \
                     {err}\nserver log:\n{}",
                    self.port,
                    self.log_contents()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        // Immediate mode: nothing to keep, and it never waits for clients.
        let _ = self
            .runner
            .std_command("pg_ctl")
            .arg("stop")
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "-s"])
            .stdin(Stdio::null())
            .output();
        self.reaper.disarm();
        // `dir` (a TempDir) is removed when the fields drop; root may remove the postgres
        // user's files.
    }
}

/// Runs the Postgres tools, as the `postgres` OS user when we are root.
#[derive(Debug)]
struct Runner {
    bin: PathBuf,
    as_os_user: bool,
    /// Commands run from the cluster dir: `postgres` complains if it cannot read its cwd.
    cwd: PathBuf,
}

impl Runner {
    fn tool(&self, name: &str) -> PathBuf {
        self.bin.join(name)
    }

    fn argv(&self, name: &str) -> (OsString, Vec<OsString>) {
        let tool = self.tool(name).into_os_string();
        if self.as_os_user {
            let args = vec!["-u".into(), OS_USER.into(), "--".into(), tool];
            ("runuser".into(), args)
        } else {
            (tool, Vec::new())
        }
    }

    fn command(&self, name: &str) -> tokio::process::Command {
        let (program, args) = self.argv(name);
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args)
            .current_dir(&self.cwd)
            .env("LC_ALL", "C")
            .kill_on_drop(true);
        cmd
    }

    fn std_command(&self, name: &str) -> std::process::Command {
        let (program, args) = self.argv(name);
        let mut cmd = std::process::Command::new(program);
        cmd.args(args).current_dir(&self.cwd).env("LC_ALL", "C");
        cmd
    }
}

/// Runs a command to completion; an error carries its exit status and output.
async fn run(mut cmd: tokio::process::Command, what: &str) -> Result<Output> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

/// The settings every test cluster gets, appended to `postgresql.conf` (the port is passed on
/// the command line instead, so a retry on another port needs no rewrite).
fn append_settings(conf: &Path, socket_dir: &Path) -> Result<()> {
    use std::io::Write as _;
    let settings = format!(
        "\n# Added by sentinel-tests: a throwaway cluster, fast and private.\n\
         listen_addresses = '127.0.0.1'\n\
         unix_socket_directories = {}\n\
         max_connections = 200\n\
         fsync = off\n\
         synchronous_commit = off\n\
         full_page_writes = off\n",
        quote_literal(&socket_dir.display().to_string())
    );
    let mut file = fs::OpenOptions::new()
        .append(true)
        .open(conf)
        .with_context(|| format!("opening {}", conf.display()))?;
    file.write_all(settings.as_bytes())
        .with_context(|| format!("writing {}", conf.display()))
}

/// A base directory for cluster temp dirs. When the server runs as another OS user, every
/// ancestor must be traversable by others (`o+x`), which `$TMPDIR` may not be (e.g. under
/// `/root`); then fall back to `/tmp`.
fn temp_base(as_os_user: bool) -> Result<PathBuf> {
    let env_tmp = std::env::temp_dir();
    if !as_os_user {
        return Ok(env_tmp);
    }
    for candidate in [env_tmp, PathBuf::from("/tmp")] {
        if traversable_by_others(&candidate) {
            return Ok(candidate);
        }
    }
    bail!(
        "neither $TMPDIR nor /tmp is traversable by the {OS_USER} user; point TMPDIR at a \
         directory whose ancestors all have o+x"
    )
}

fn traversable_by_others(dir: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    let Ok(dir) = dir.canonicalize() else {
        return false;
    };
    dir.ancestors()
        .all(|p| fs::metadata(p).is_ok_and(|m| m.is_dir() && m.permissions().mode() & 0o001 != 0))
}

/// The uid and gid of an OS user, from `id` (works with any NSS setup).
fn os_user_ids(user: &str) -> Result<(u32, u32)> {
    let id = |flag: &str| -> Result<u32> {
        let out = std::process::Command::new("id")
            .args([flag, user])
            .output()
            .with_context(|| format!("running id {flag} {user}"))?;
        ensure!(
            out.status.success(),
            "the OS user `{user}` does not exist (it comes with the postgresql package: run \
             scripts/setup.sh): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .with_context(|| format!("parsing the output of id {flag} {user}"))
    };
    Ok((id("-u")?, id("-g")?))
}
