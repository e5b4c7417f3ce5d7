"""Fixtures for the Python client tests: a throwaway Postgres 15 cluster and Sentinel processes.

This mirrors the Rust harness (tests/src/pg.rs, tests/src/sentinel.rs, tests/src/config.rs): the
cluster is a fresh `initdb` in a temp dir (SCRAM in pg_hba.conf, fsync off, listening on
127.0.0.1 on a free port, its unix socket inside the temp dir); when the tests run as root the
server runs as the `postgres` OS user through `runuser`. Sentinel runs as a child process
(`sentinel run --config <file>`) with a config in the format of deploy/sentinel.example.toml, one
SCRAM user whose verifier comes from `sentinel scram-verifier`, and the server password in an
environment variable. Everything is session-scoped and torn down at the end.

Environment: SENTINEL_BIN (default: <repo>/target/debug/sentinel), SENTINEL_PG_BIN (default:
/usr/lib/postgresql/15/bin).
"""

from __future__ import annotations

import atexit
import os
import secrets
import shutil
import socket
import string
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest

REPO = Path(__file__).resolve().parents[2]
PG_BIN = Path(os.environ.get("SENTINEL_PG_BIN", "/usr/lib/postgresql/15/bin"))
OS_USER = "postgres"
SUPERUSER = "postgres"
START_TIMEOUT = 30.0


def sentinel_binary() -> Path:
    env = os.environ.get("SENTINEL_BIN")
    path = Path(env) if env else REPO / "target" / "debug" / "sentinel"
    if not path.is_file():
        raise RuntimeError(
            f"the sentinel binary is not built: {path} does not exist. "
            "Run `cargo build -p sentinel` or set SENTINEL_BIN"
        )
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def random_secret(n: int = 24) -> str:
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(n))


def running_as_root() -> bool:
    return os.geteuid() == 0


def quote_literal(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def toml_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def wait_port(port: int, proc: subprocess.Popen | None, timeout: float, what: str, log) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited ({proc.returncode}) before listening:\n{log()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not listen on {port} within {timeout}s:\n{log()}")
        time.sleep(0.05)


@dataclass
class Db:
    """A role and a database of the same name that it owns, with a password."""

    name: str
    role: str
    password: str
    port: int

    @property
    def direct_dsn(self) -> str:
        return (
            f"host=127.0.0.1 port={self.port} user={self.role} "
            f"password={self.password} dbname={self.name}"
        )

    def connect_direct(self, **kw) -> psycopg.Connection:
        return psycopg.connect(self.direct_dsn, autocommit=True, **kw)


class PgCluster:
    """A running throwaway cluster."""

    def __init__(self) -> None:
        if not (PG_BIN / "initdb").is_file():
            raise RuntimeError(
                f"Postgres 15 server binaries not found in {PG_BIN}: run scripts/setup.sh "
                "or set SENTINEL_PG_BIN"
            )
        self.as_os_user = running_as_root()
        base = "/tmp" if self.as_os_user else None
        self.root = Path(tempfile.mkdtemp(prefix="sentinel-pytest-pg-", dir=base))
        self.data = self.root / "data"
        self.sock = self.root / "sock"
        self.log = self.root / "postgres.log"
        self.password = random_secret()
        self.port = 0
        self._counter = 0
        self._started = False
        atexit.register(self.stop)
        try:
            self._init_and_start()
        except BaseException:
            self.stop()
            raise

    def _cmd(self, tool: str, *args: str) -> list[str]:
        argv = [str(PG_BIN / tool), *args]
        if self.as_os_user:
            return ["runuser", "-u", OS_USER, "--", *argv]
        return argv

    def _run(self, argv: list[str], what: str) -> None:
        out = subprocess.run(
            argv,
            cwd=self.root,
            env={**os.environ, "LC_ALL": "C"},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if out.returncode != 0:
            raise RuntimeError(f"{what} failed ({out.returncode}):\n{out.stdout}{out.stderr}")

    def log_contents(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def _init_and_start(self) -> None:
        self.sock.mkdir()
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.password + "\n")
        if self.as_os_user:
            for p in (self.root, self.sock, pwfile):
                shutil.chown(p, OS_USER, OS_USER)
        self._run(
            self._cmd(
                "initdb",
                "-D",
                str(self.data),
                "-U",
                SUPERUSER,
                f"--pwfile={pwfile}",
                "--auth-local=scram-sha-256",
                "--auth-host=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
                "--no-instructions",
            ),
            "initdb",
        )
        pwfile.unlink()
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(
                "\n# Added by tests/python/conftest.py: a throwaway cluster, fast and private.\n"
                "listen_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = {quote_literal(str(self.sock))}\n"
                "max_connections = 200\n"
                "fsync = off\n"
                "synchronous_commit = off\n"
                "full_page_writes = off\n"
            )
        for attempt in range(5):
            self.port = free_port()
            before = len(self.log_contents())
            try:
                self._run(
                    self._cmd(
                        "pg_ctl",
                        "start",
                        "-D",
                        str(self.data),
                        "-l",
                        str(self.log),
                        "-w",
                        "-t",
                        "60",
                        "-s",
                        "-o",
                        f"-p {self.port}",
                    ),
                    "pg_ctl start",
                )
                self._started = True
                break
            except RuntimeError as e:
                taken = "Address already in use" in self.log_contents()[before:]
                if not taken or attempt == 4:
                    raise RuntimeError(f"{e}\nserver log:\n{self.log_contents()}") from None
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                with self.connect_superuser() as c:
                    c.execute("SELECT 1")
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def superuser_dsn(self, db: str = "postgres") -> str:
        return (
            f"host=127.0.0.1 port={self.port} user={SUPERUSER} "
            f"password={self.password} dbname={db}"
        )

    def connect_superuser(self, db: str = "postgres") -> psycopg.Connection:
        return psycopg.connect(self.superuser_dsn(db), autocommit=True, connect_timeout=10)

    def create_db(self, prefix: str) -> Db:
        self._counter += 1
        name = f"{prefix}_{os.getpid()}_{self._counter}"
        password = random_secret()
        with self.connect_superuser() as c:
            c.execute(
                f'CREATE ROLE "{name}" LOGIN NOSUPERUSER PASSWORD {quote_literal(password)}'
            )
            c.execute(f'CREATE DATABASE "{name}" OWNER "{name}"')
        return Db(name=name, role=name, password=password, port=self.port)

    def stop(self) -> None:
        if self._started:
            self._started = False
            subprocess.run(
                self._cmd("pg_ctl", "stop", "-D", str(self.data), "-m", "immediate", "-w", "-s"),
                cwd=self.root,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=60,
            )
        shutil.rmtree(self.root, ignore_errors=True)


def scram_verifier(password: str) -> str:
    out = subprocess.run(
        [str(sentinel_binary()), "scram-verifier"],
        input=password + "\n",
        capture_output=True,
        text=True,
        timeout=30,
    )
    if out.returncode != 0:
        raise RuntimeError(f"sentinel scram-verifier failed: {out.stderr}")
    verifier = out.stdout.strip()
    if not verifier.startswith("SCRAM-SHA-256$"):
        raise RuntimeError(f"unexpected verifier from sentinel scram-verifier: {verifier!r}")
    return verifier


_keys_cache: tuple[str, dict[str, str]] | None = None


def keys_setup() -> tuple[str, dict[str, str]]:
    """A `[keys]` table and the environment with a fresh throwaway master keyring, from
    `sentinel keys new` (once per session); nothing for a binary without the `keys` command."""
    global _keys_cache
    if _keys_cache is not None:
        return _keys_cache
    binary = str(sentinel_binary())
    help_text = subprocess.run(
        [binary, "--help"], capture_output=True, text=True, timeout=30
    ).stdout
    if not any(line.split()[:1] == ["keys"] for line in help_text.splitlines()):
        _keys_cache = ("", {})
        return _keys_cache
    out = subprocess.run(
        [binary, "keys", "new"], capture_output=True, text=True, timeout=30
    )
    if out.returncode != 0:
        raise RuntimeError(f"sentinel keys new failed: {out.stderr}")
    env: dict[str, str] = {}
    salt_line = None
    for line in out.stdout.splitlines():
        if line.startswith("SENTINEL_MASTER_KEY="):
            env["SENTINEL_MASTER_KEY"] = line.split("=", 1)[1].strip()
        elif line.startswith("salt"):
            salt_line = line.strip()
    if not env or salt_line is None:
        raise RuntimeError("unexpected output of `sentinel keys new` (no keyring or salt line)")
    _keys_cache = (f"\n[keys]\n{salt_line}\n", env)
    return _keys_cache


@dataclass
class Sentinel:
    """A running `sentinel run` in front of one database, with one SCRAM user (the db's role)."""

    db: Db
    port: int
    dir: Path
    proc: subprocess.Popen = field(repr=False)
    admin_port: int

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def dsn(self) -> str:
        return (
            f"host=127.0.0.1 port={self.port} user={self.db.role} "
            f"password={self.db.password} dbname={self.db.name}"
        )

    def connect(self, **kw) -> psycopg.Connection:
        kw.setdefault("connect_timeout", 10)
        return psycopg.connect(self.dsn, **kw)

    def asyncpg_kwargs(self) -> dict:
        return dict(
            host="127.0.0.1",
            port=self.port,
            user=self.db.role,
            password=self.db.password,
            database=self.db.name,
            timeout=10,
        )

    def logs(self) -> str:
        try:
            return (self.dir / "sentinel.log").read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)


TENANCY_OFF = "[tenancy]\nenabled = false\n"


def tenancy_toml(scope: str = "transaction", global_tables: tuple[str, ...] = ("tenants",)) -> str:
    """`[tenancy]` switched on, every key spelled out at the product default except `scope`
    and `global_tables` (like the Rust builder's `SentinelConfig::tenancy()`)."""
    tables = ", ".join(toml_str(t) for t in global_tables)
    return (
        "[tenancy]\n"
        "enabled = true\n"
        "enforce = true\n"
        'setting = "app.tenant_id"\n'
        'id_pattern = "^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$"\n'
        'sources = ["token", "startup", "comment", "set"]\n'
        f"scope = {toml_str(scope)}\n"
        'comment_key = "tenant"\n'
        f"global_tables = [{tables}]\n"
        "bypass_users = []\n"
        "allow_do = false\n"
        'startup_networks = ["127.0.0.1/32", "::1/128"]\n'
        "verdict_cache_size = 10000\n"
        'audit_on_start = "off"\n'
    )


def render_config(
    db: Db,
    listen_port: int,
    pool_size: int,
    verifier: str,
    env_var: str,
    keys_toml: str,
    tenancy: str = TENANCY_OFF,
    admin_port: int | None = None,
) -> str:
    if admin_port is None:
        admin_port = free_port()
    return f"""# Rendered by tests/python/conftest.py (format: deploy/sentinel.example.toml).

[process]
threads = 2
shutdown_grace = "5s"
{keys_toml}
[postgres]
listen = "127.0.0.1:{listen_port}"
pool_mode = "transaction"
max_client_conn = 1000
pool_size = {pool_size}
min_pool_size = 0
pool_wait_timeout = "10s"
server_connect_timeout = "5s"
server_lifetime = "1h"
server_idle_timeout = "10m"
query_timeout = "0s"
idle_transaction_timeout = "0s"
client_login_timeout = "15s"
max_message_bytes = 33554432
trust_networks = ["127.0.0.1/32", "::1/128"]

[postgres.upstream]
host = "127.0.0.1"
port = {db.port}
tls = "disable"

[admin]
listen = "127.0.0.1:{admin_port}"

{tenancy}
[[postgres.users]]
name = {toml_str(db.role)}
auth = "scram-sha-256"
scram_verifier = {toml_str(verifier)}
server_user = {toml_str(db.role)}
server_password_env = {toml_str(env_var)}
"""


def start_sentinel(db: Db, pool_size: int, tenancy: str = TENANCY_OFF) -> Sentinel:
    binary = sentinel_binary()
    env_var = "SENTINEL_PYTEST_SERVER_PASSWORD"
    keys_toml, keys_env = keys_setup()
    run_dir = Path(tempfile.mkdtemp(prefix="sentinel-pytest-run-"))
    for attempt in range(5):
        port, admin_port = free_port(), free_port()
        config = run_dir / "sentinel.toml"
        config.write_text(
            render_config(
                db,
                port,
                pool_size,
                scram_verifier(db.password),
                env_var,
                keys_toml,
                tenancy,
                admin_port=admin_port,
            )
        )
        log_path = run_dir / "sentinel.log"
        log = open(log_path, "wb")
        proc = subprocess.Popen(
            [str(binary), "run", "--config", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={
                **os.environ,
                **keys_env,
                env_var: db.password,
                "NO_COLOR": "1",
                "RUST_BACKTRACE": "1",
            },
        )
        log.close()
        sentinel = Sentinel(db=db, port=port, dir=run_dir, proc=proc, admin_port=admin_port)
        atexit.register(sentinel.stop)
        try:
            wait_port(port, proc, START_TIMEOUT, "sentinel", sentinel.logs)
            wait_port(admin_port, proc, START_TIMEOUT, "sentinel's admin port", sentinel.logs)
            return sentinel
        except RuntimeError:
            if "Address already in use" in sentinel.logs() and attempt < 4:
                proc.kill()
                proc.wait()
                continue
            sentinel.stop()
            raise
    raise AssertionError("unreachable")


@pytest.fixture(scope="session")
def pg():
    cluster = PgCluster()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def sentinel_pool2(pg):
    """A Sentinel with pool_size 2 in front of its own database."""
    s = start_sentinel(pg.create_db("pypool2"), pool_size=2)
    yield s
    s.stop()


@pytest.fixture(scope="session")
def sentinel_pool3(pg):
    """A Sentinel with pool_size 3 in front of its own database."""
    s = start_sentinel(pg.create_db("pypool3"), pool_size=3)
    yield s
    s.stop()


_table_counter = 0


@pytest.fixture
def table_name(request) -> str:
    """A table name unique in this session."""
    global _table_counter
    _table_counter += 1
    base = "".join(ch if ch.isalnum() else "_" for ch in request.node.name.lower())[:40]
    return f"t_{base}_{_table_counter}"


# --- tenancy: a database with row-level security, and Sentinels that enforce the tenant ---

TENANTS = ("acme", "globex", "initech")
SEEDED_PER_TENANT = 3


@dataclass
class TenancyEnv:
    """A Sentinel with tenancy on, in front of a database whose `items` table is protected by
    RLS (ENABLE + FORCE, policy on `nullif(current_setting('app.tenant_id', true), '')`), owned
    by a NOLOGIN role; the app role Sentinel logs in as (the database's role) only has DML grants.
    `tenants` is a global table. The oracle is a superuser connection straight to Postgres."""

    sentinel: Sentinel
    pg: PgCluster

    @property
    def db(self) -> Db:
        return self.sentinel.db

    def oracle(self) -> psycopg.Connection:
        return self.pg.connect_superuser(self.db.name)

    def oracle_rows(self, tenant: str) -> list[tuple[str, str]]:
        with self.oracle() as c:
            return [
                (r[0], r[1])
                for r in c.execute(
                    "SELECT tenant_id, v FROM items WHERE tenant_id = %s ORDER BY id", (tenant,)
                )
            ]


def create_tenancy_db(pg: PgCluster, prefix: str) -> Db:
    db = pg.create_db(prefix)
    owner = f"{db.role}_own"
    with pg.connect_superuser(db.name) as c:
        c.execute(f'CREATE ROLE "{owner}" NOLOGIN NOSUPERUSER NOBYPASSRLS')
        c.execute(f'GRANT USAGE, CREATE ON SCHEMA public TO "{owner}"')
        c.execute(f'SET ROLE "{owner}"')
        c.execute("CREATE TABLE tenants (id text PRIMARY KEY, name text NOT NULL)")
        c.execute(
            "CREATE TABLE items (id serial PRIMARY KEY, tenant_id text NOT NULL, v text NOT NULL)"
        )
        c.execute("ALTER TABLE items ENABLE ROW LEVEL SECURITY")
        c.execute("ALTER TABLE items FORCE ROW LEVEL SECURITY")
        c.execute(
            "CREATE POLICY items_tenant ON items"
            " USING (tenant_id = nullif(current_setting('app.tenant_id', true), ''))"
            " WITH CHECK (tenant_id = nullif(current_setting('app.tenant_id', true), ''))"
        )
        c.execute(f'GRANT SELECT, INSERT, UPDATE, DELETE ON items, tenants TO "{db.role}"')
        c.execute(f'GRANT USAGE, SELECT ON SEQUENCE items_id_seq TO "{db.role}"')
        c.execute("RESET ROLE")
        for t in TENANTS:
            c.execute("INSERT INTO tenants VALUES (%s, %s)", (t, t))
            for i in range(SEEDED_PER_TENANT):
                c.execute("INSERT INTO items (tenant_id, v) VALUES (%s, %s)", (t, f"{t}-seed-{i}"))
    # The fixture itself must be sound: the app role sees nothing without a tenant.
    with db.connect_direct() as c:
        assert c.execute("SELECT count(*) FROM items").fetchone() == (0,)
    return db


@pytest.fixture(scope="session")
def sentinel_tenancy(pg):
    """Tenancy on, scope = "transaction", pool_size 2."""
    s = start_sentinel(
        create_tenancy_db(pg, "pyten"), pool_size=2, tenancy=tenancy_toml("transaction")
    )
    yield TenancyEnv(sentinel=s, pg=pg)
    s.stop()


@pytest.fixture(scope="session")
def sentinel_tenancy_session(pg):
    """Tenancy on, scope = "session" (a set-source tenant lasts until changed), pool_size 2."""
    s = start_sentinel(
        create_tenancy_db(pg, "pytensess"), pool_size=2, tenancy=tenancy_toml("session")
    )
    yield TenancyEnv(sentinel=s, pg=pg)
    s.stop()


# --- LLM egress: the mock provider (target/debug/mock_llm) and a Sentinel with an [llm] section ---
#
# Mirrors tests/src/llm.rs: providers `openai` and `anthropic` at the mock's base URL, the test
# models mock-gpt ($1 in, $0.50 cached, $2 out per million tokens), mock-embed ($0.10 in) and
# mock-claude ($3 in, $0.30 cache read, $3.75 cache write, $15 out), the provider keys in
# environment variables, virtual keys from `sentinel vkey issue`. No Postgres cluster: the
# `[postgres]` section has one trust user and an upstream nobody listens on.

import json as _json
import re as _re
import urllib.request as _urlreq
from decimal import ROUND_CEILING as _ROUND_CEILING
from decimal import Decimal as _Decimal

LLM_OPENAI_KEY = "sk-real-openai"
LLM_ANTHROPIC_KEY = "sk-ant-real"
LLM_GPT = "mock-gpt"
LLM_EMBED = "mock-embed"
LLM_CLAUDE = "mock-claude"

# $ per million tokens = µ$ per token.
LLM_PRICES = {
    LLM_GPT: {"input": "1", "cached_input": "0.5", "output": "2"},
    LLM_EMBED: {"input": "0.1", "output": "0"},
    LLM_CLAUDE: {
        "input": "3",
        "cached_input": "0.3",
        "cache_write_5m": "3.75",
        "output": "15",
    },
}

LLM_TENANTS = {
    "acme": ('"1.00"', []),
    "poor": ('"0.000100"', []),
    # One request a minute: the second call of a test is refused by Sentinel with 429.
    "slow": ('"1.00"', ["requests_per_minute = 1"]),
}


def mock_llm_binary() -> Path:
    env = os.environ.get("MOCK_LLM_BIN")
    path = Path(env) if env else REPO / "target" / "debug" / "mock_llm"
    if not path.is_file():
        raise RuntimeError(
            f"the mock_llm binary is not built: {path} does not exist. Run "
            "`cargo build -p sentinel-tests --bin mock_llm` or set MOCK_LLM_BIN"
        )
    return path


def _http_json(method: str, url: str, body: object | None = None):
    data = None if body is None else _json.dumps(body).encode()
    req = _urlreq.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("content-type", "application/json")
    opener = _urlreq.build_opener(_urlreq.ProxyHandler({}))
    with opener.open(req, timeout=10) as r:
        text = r.read().decode()
    return _json.loads(text) if text else None


class MockLlmProcess:
    """`mock_llm --port 0` as a child process, inspected over its `/_mock/…` endpoints."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="sentinel-pytest-mockllm-"))
        self.stderr_path = self.dir / "stderr.log"
        stderr = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(
            [str(mock_llm_binary()), "--port", "0"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
        stderr.close()
        atexit.register(self.stop)
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if not line.startswith("PORT "):
            self.stop()
            raise RuntimeError(f"mock_llm did not print its port (got {line!r})")
        self.port = int(line.split()[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def requests(self) -> list[dict]:
        return _http_json("GET", f"{self.base_url}/_mock/requests")

    def usage(self) -> dict:
        return _http_json("GET", f"{self.base_url}/_mock/usage")

    def clear(self) -> None:
        _http_json("POST", f"{self.base_url}/_mock/clear")

    def set_defaults(self, patch: dict | None = None) -> dict:
        return _http_json("POST", f"{self.base_url}/_mock/defaults", patch or {})

    def settled_requests(self, n: int, timeout: float = 10.0) -> list[dict]:
        """Waits until `n` requests were recorded and none is still in flight."""
        deadline = time.monotonic() + timeout
        while True:
            reqs = self.requests()
            if len(reqs) >= n and all(r["outcome"] != "in_flight" for r in reqs):
                return reqs
            if time.monotonic() > deadline:
                raise AssertionError(f"mock: {n} finished requests expected, got {reqs}")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        if self.proc.stdout:
            self.proc.stdout.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@dataclass
class LlmCharge:
    """One `settled` line of Sentinel's log."""

    request_id: str
    tenant: str
    micros: int
    outcome: str
    estimated: bool
    reserved_micros: int | None = None
    line: str = field(default="", repr=False)


def _log_field(line: str, name: str) -> str | None:
    m = _re.search(rf"(?:^|[\s{{]){_re.escape(name)}=(\"[^\"]*\"|[^\s}}:]+)", line)
    return m.group(1).strip('"') if m else None


def _usd_micros(usd: str | None) -> int | None:
    """`$0.001014` → 1014."""
    if usd is None:
        return None
    whole, frac = usd.lstrip("$").split(".")
    return int(whole) * 1_000_000 + int(frac.ljust(6, "0")[:6])


def llm_charges(log: str) -> list[LlmCharge]:
    """Every `settled` line of Sentinel's log, in order (like `charges` in tests/src/llm.rs)."""
    out = []
    for line in log.splitlines():
        if " settled" not in line:
            continue
        micros = _usd_micros(_log_field(line, "charged"))
        if micros is None:
            continue
        out.append(
            LlmCharge(
                request_id=_log_field(line, "request_id") or "",
                tenant=_log_field(line, "tenant") or "",
                micros=micros,
                outcome=_log_field(line, "outcome") or "",
                estimated=_log_field(line, "estimated") == "true",
                reserved_micros=_usd_micros(_log_field(line, "reserved")),
                line=line,
            )
        )
    return out


def llm_expected_micros(model: str, usage: dict) -> int:
    """What a call with the mock's `usage` (its own terms: OpenAI input includes cached,
    Anthropic input excludes cache reads and writes) costs, in µ$, rounded up."""
    p = {k: _Decimal(v) for k, v in LLM_PRICES[model].items()}
    inp = usage.get("input_tokens", 0)
    cached = usage.get("cached_tokens", 0)
    write = usage.get("cache_write_tokens", 0)
    out = usage.get("output_tokens", 0)
    if model == LLM_CLAUDE:
        total = (
            inp * p["input"]
            + cached * p["cached_input"]
            + write * p["cache_write_5m"]
            + out * p["output"]
        )
    else:
        total = (inp - cached) * p["input"] + out * p["output"]
        if cached:
            total += cached * p["cached_input"]
    return int(total.to_integral_value(rounding=_ROUND_CEILING))


def render_llm_section(listen_port: int, mock_url: str, tenants: dict) -> str:
    out = f"""
[ledger]
backend = "memory"

[llm]
listen = "127.0.0.1:{listen_port}"
connect_timeout = "1s"
first_byte_timeout = "3s"
idle_timeout = "3s"
total_timeout = "20s"
connect_retries = 1

[[llm.providers]]
name = "openai"
kind = "openai"
base_url = "{mock_url}/v1"
models = ["{LLM_GPT}", "{LLM_EMBED}", "gpt-4o-mini"]
api_key_env = "SENTINEL_TEST_OPENAI_KEY"

[[llm.providers]]
name = "anthropic"
kind = "anthropic"
base_url = "{mock_url}/v1"
models = ["{LLM_CLAUDE}", "claude-haiku-4-5"]
api_key_env = "SENTINEL_TEST_ANTHROPIC_KEY"

[llm.prices.{LLM_GPT}]
input = "1"
cached_input = "0.5"
output = "2"
context_window = 100000
max_output_tokens = 1000
default_output_tokens = 500
tokenizer = "o200k"

[llm.prices.{LLM_EMBED}]
input = "0.1"
output = "0"
context_window = 8192
max_output_tokens = 1
tokenizer = "cl100k"

[llm.prices.{LLM_CLAUDE}]
input = "3"
cached_input = "0.3"
cache_write_5m = "3.75"
cache_write_1h = "6"
output = "15"
context_window = 200000
max_output_tokens = 4096
tokenizer = "bytes"
"""
    for name, (budget, extra) in tenants.items():
        out += f"\n[llm.tenants.{name}]\nbudget_usd = {budget}\n"
        for line in extra:
            out += line + "\n"
    return out


def render_egress_config(
    pg_listen_port: int,
    unused_upstream_port: int,
    keys_toml: str,
    llm_toml: str,
    admin_port: int | None = None,
) -> str:
    if admin_port is None:
        admin_port = free_port()
    return f"""# Rendered by tests/python/conftest.py: LLM egress only (no Postgres behind it).

[process]
threads = 2
shutdown_grace = "5s"
{keys_toml}
[postgres]
listen = "127.0.0.1:{pg_listen_port}"
pool_mode = "transaction"
pool_size = 2
min_pool_size = 0
trust_networks = ["127.0.0.1/32", "::1/128"]

[postgres.upstream]
host = "127.0.0.1"
port = {unused_upstream_port}
tls = "disable"

[admin]
listen = "127.0.0.1:{admin_port}"

{TENANCY_OFF}
[[postgres.users]]
name = "app"
auth = "trust"
server_user = "app"
{llm_toml}"""


@dataclass
class LlmEgress:
    """A running Sentinel whose LLM egress listens on `port`, in front of a `MockLlmProcess`."""

    port: int
    pg_port: int
    admin_port: int
    dir: Path
    config: Path
    env: dict = field(repr=False)
    proc: subprocess.Popen = field(repr=False)
    _keys: dict = field(default_factory=dict, repr=False)

    @property
    def base_url(self) -> str:
        """The Anthropic SDK's base URL; the OpenAI SDK's is `openai_base_url`."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def openai_base_url(self) -> str:
        return f"{self.base_url}/v1"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def logs(self) -> str:
        try:
            return (self.dir / "sentinel.log").read_text(errors="replace")
        except OSError:
            return ""

    def charges(self) -> list[LlmCharge]:
        return llm_charges(self.logs())

    def wait_charges(self, n: int, timeout: float = 10.0) -> list[LlmCharge]:
        """Waits until Sentinel has logged at least `n` settlements in all; returns them all."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.charges()
            if len(found) >= n:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{len(found)} settlements logged, {n} expected; log:\n{self.logs()}"
                )
            time.sleep(0.02)

    def key(self, tenant: str) -> str:
        """A virtual key for `tenant` from `sentinel vkey issue` (one per tenant, cached)."""
        if tenant not in self._keys:
            out = subprocess.run(
                [str(sentinel_binary()), "vkey", "issue", "--tenant", tenant, "--config",
                 str(self.config)],
                capture_output=True,
                text=True,
                timeout=30,
                env={**os.environ, **self.env, "NO_COLOR": "1"},
            )
            if out.returncode != 0:
                raise RuntimeError(f"sentinel vkey issue failed: {out.stderr}")
            keys = [w for w in out.stdout.split() if w.startswith("sk-stn-")]
            if len(keys) != 1:
                raise RuntimeError(f"unexpected output of sentinel vkey issue: {out.stdout!r}")
            self._keys[tenant] = keys[0]
        return self._keys[tenant]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)


def start_llm_egress(mock: MockLlmProcess, tenants: dict | None = None) -> LlmEgress:
    binary = sentinel_binary()
    keys_toml, keys_env = keys_setup()
    if not keys_env:
        raise RuntimeError("this sentinel binary has no `keys` command: no virtual keys")
    env = {
        **keys_env,
        "SENTINEL_TEST_OPENAI_KEY": LLM_OPENAI_KEY,
        "SENTINEL_TEST_ANTHROPIC_KEY": LLM_ANTHROPIC_KEY,
    }
    run_dir = Path(tempfile.mkdtemp(prefix="sentinel-pytest-llm-"))
    for attempt in range(5):
        pg_port, llm_port, unused = free_port(), free_port(), free_port()
        admin_port = free_port()
        config = run_dir / "sentinel.toml"
        config.write_text(
            render_egress_config(
                pg_port,
                unused,
                keys_toml,
                render_llm_section(llm_port, mock.base_url, tenants or LLM_TENANTS),
                admin_port=admin_port,
            )
        )
        log = open(run_dir / "sentinel.log", "wb")
        proc = subprocess.Popen(
            [str(binary), "run", "--config", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env, "NO_COLOR": "1", "RUST_BACKTRACE": "1"},
        )
        log.close()
        egress = LlmEgress(
            port=llm_port,
            pg_port=pg_port,
            admin_port=admin_port,
            dir=run_dir,
            config=config,
            env=env,
            proc=proc,
        )
        atexit.register(egress.stop)
        try:
            wait_port(pg_port, proc, START_TIMEOUT, "sentinel", egress.logs)
            wait_port(llm_port, proc, START_TIMEOUT, "sentinel's LLM egress", egress.logs)
            wait_port(admin_port, proc, START_TIMEOUT, "sentinel's admin port", egress.logs)
            return egress
        except RuntimeError:
            if "Address already in use" in egress.logs() and attempt < 4:
                proc.kill()
                proc.wait()
                continue
            egress.stop()
            raise
    raise AssertionError("unreachable")


@pytest.fixture(scope="session")
def mock_llm():
    m = MockLlmProcess()
    yield m
    m.stop()


@pytest.fixture(scope="session")
def llm_egress(mock_llm):
    """Sentinel's egress in front of the mock, with tenants acme ($1), poor ($0.0001) and slow
    (one request a minute)."""
    e = start_llm_egress(mock_llm)
    yield e
    e.stop()
