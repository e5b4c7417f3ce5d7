#!/usr/bin/env bash
# Sentinel in front of a throwaway Postgres, on this machine, in one command.
#
#   1. installs what is missing (scripts/setup.sh) and builds Sentinel (release);
#   2. initdb's a fresh Postgres 15 cluster under .sentinel-demo/ (as the postgres OS user when run
#      as root) on a free port, with two login roles: `app_owner`, which owns the database `app`
#      and its tables, and `app`, the role Sentinel logs in as (not the owner, not superuser, not
#      BYPASSRLS);
#   3. loads deploy/rls.sql (tenant tables with ENABLE + FORCE row-level security, grants to
#      `app`) and deploy/rls-demo-data.sql (tenants acme, globex, initech) as `app_owner`;
#   4. makes a master keyring and an environment salt with `sentinel keys new` (the keyring into
#      .sentinel-demo/master.key, mode 0600), seals the upstream password of role `app` with
#      `sentinel seal`, and writes .sentinel-demo/sentinel.toml with the salt, the key file, the
#      sealed password (no plaintext password in the config) and [tenancy] on;
#   5. runs `sentinel audit`, which checks that nothing in the database defeats RLS for `app`;
#   6. starts `sentinel run` on 127.0.0.1:6432 (or $SENTINEL_DEMO_PORT) and plays a short psql
#      session through it: a query without a tenant is refused (42501 tenant context required),
#      the same query tagged /*tenant='acme'*/ runs, and each tenant sees its own rows only;
#   7. prints the psql line to connect through Sentinel and leaves it running, its log following.
# Ctrl-C stops Sentinel and then Postgres. SENTINEL_BIN=<path> uses a prebuilt binary instead of
# building one. Every run starts from a fresh cluster and fresh keys; passwords are
# random per run and printed here, for the demo only.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
if ! command -v cargo >/dev/null 2>&1 && [[ -x "$HOME/.cargo/bin/cargo" ]]; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi

say() { printf '[demo] %s\n' "$*"; }
die() { printf '[demo] error: %s\n' "$*" >&2; exit 1; }
secret() { python3 -c 'import secrets; print(secrets.token_hex(16))'; }
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
port_in_use() {
    python3 -c 'import socket, sys; s = socket.socket(); sys.exit(0 if s.connect_ex(("127.0.0.1", int(sys.argv[1]))) == 0 else 1)' "$1"
}

listen_port="${SENTINEL_DEMO_PORT:-6432}"
pgbin=/usr/lib/postgresql/15/bin
demo="$repo/.sentinel-demo"
pgdir="$demo/pg"

scripts/setup.sh
if [[ -n "${SENTINEL_BIN:-}" ]]; then
    bin="$SENTINEL_BIN" # a prebuilt binary: no build
else
    say "building sentinel (release)"
    cargo build --release -q -p sentinel
    bin="${CARGO_TARGET_DIR:-$repo/target}/release/sentinel"
fi
[[ -x "$bin" ]] || die "no sentinel binary at $bin"

port_in_use "$listen_port" && die "127.0.0.1:$listen_port is taken (set SENTINEL_DEMO_PORT to another port)"

# Postgres refuses to run as root: run its tools as the postgres OS user then.
as_pg=()
if [[ "$(id -u)" -eq 0 ]]; then
    as_pg=(runuser -u postgres --)
fi
pg() { "${as_pg[@]}" "$pgbin/$1" "${@:2}"; }

# A previous run that was killed hard may have left its server running.
if [[ -f "$pgdir/data/postmaster.pid" ]]; then
    say "stopping the cluster of a previous run"
    (cd /tmp && pg pg_ctl stop -D "$pgdir/data" -m immediate -w >/dev/null 2>&1) || true
fi
rm -rf "$demo"
mkdir -p "$pgdir/sock"
chmod 700 "$demo"
if ((${#as_pg[@]})); then
    chown -R postgres:postgres "$pgdir"
    chmod 711 "$demo"
    "${as_pg[@]}" test -w "$pgdir" ||
        die "the postgres user cannot reach $pgdir (a parent directory lacks o+x): move the repo or fix the permissions"
fi

pg_port="$(free_port)"
su_password="$(secret)"
owner_password="$(secret)"  # schema changes -> Postgres, as role app_owner
app_password="$(secret)"    # Sentinel -> Postgres, as role app
client_password="$(secret)" # you -> Sentinel, as user app

say "initdb into $pgdir/data (port $pg_port)"
pwfile="$pgdir/pwfile"
printf '%s\n' "$su_password" >"$pwfile"
if ((${#as_pg[@]})); then chown postgres:postgres "$pwfile"; fi
(cd "$pgdir" && pg initdb -D "$pgdir/data" -U postgres --pwfile="$pwfile" \
    --auth-local=scram-sha-256 --auth-host=scram-sha-256 --encoding=UTF8 --locale=C \
    --no-instructions >"$demo/initdb.log" 2>&1) || { cat "$demo/initdb.log" >&2; die "initdb failed"; }
rm -f "$pwfile"

sentinel_pid=""
tail_pid=""
stop_all() {
    if [[ -n "$tail_pid" ]]; then
        kill "$tail_pid" 2>/dev/null || true
    fi
    if [[ -n "$sentinel_pid" ]] && kill -0 "$sentinel_pid" 2>/dev/null; then
        say "stopping Sentinel"
        kill -TERM "$sentinel_pid" 2>/dev/null || true
        wait "$sentinel_pid" 2>/dev/null || true
    fi
    if [[ -f "$pgdir/data/postmaster.pid" ]]; then
        say "stopping Postgres"
        (cd "$pgdir" && pg pg_ctl stop -D "$pgdir/data" -m fast -w >/dev/null 2>&1) || true
    fi
}
trap stop_all EXIT
trap 'exit 130' INT TERM

say "starting Postgres on 127.0.0.1:$pg_port"
(cd "$pgdir" && pg pg_ctl start -D "$pgdir/data" -l "$pgdir/postgres.log" -w -s \
    -o "-p $pg_port -k $pgdir/sock -c listen_addresses=127.0.0.1") ||
    { cat "$pgdir/postgres.log" >&2; die "Postgres did not start"; }

psql_su() {
    PGPASSWORD="$su_password" "$pgbin/psql" -X -q -v ON_ERROR_STOP=1 \
        -h 127.0.0.1 -p "$pg_port" -U postgres "$@"
}
psql_owner() {
    PGPASSWORD="$owner_password" "$pgbin/psql" -X -q -v ON_ERROR_STOP=1 \
        -h 127.0.0.1 -p "$pg_port" -U app_owner -d app "$@"
}
say "creating roles app_owner (owns database app) and app (Sentinel's role, owns nothing)"
psql_su -d postgres \
    -c "CREATE ROLE app_owner LOGIN NOSUPERUSER PASSWORD '$owner_password'" \
    -c "CREATE ROLE app LOGIN NOSUPERUSER NOBYPASSRLS PASSWORD '$app_password'" \
    -c "CREATE DATABASE app OWNER app_owner" >/dev/null

# Row-level security and sample tenants (see deploy/), as the owner: `app` only gets grants.
say "loading deploy/rls.sql and deploy/rls-demo-data.sql into app (as app_owner)"
psql_owner -v app_role=app -f deploy/rls.sql >/dev/null
psql_owner -f deploy/rls-demo-data.sql >/dev/null

say "making a SCRAM verifier for the client password"
verifier="$(printf '%s' "$client_password" | "$bin" scram-verifier)" ||
    die "sentinel scram-verifier failed"
[[ "$verifier" == SCRAM-SHA-256\$* ]] || die "unexpected verifier: $verifier"

say "making a master keyring and a salt (sentinel keys new)"
"$bin" keys new >"$demo/keys.txt" 2>/dev/null || die "sentinel keys new failed"
keyring="$(sed -n 's/^SENTINEL_MASTER_KEY=//p' "$demo/keys.txt")"
salt_line="$(grep '^salt = ' "$demo/keys.txt" || true)"
rm -f "$demo/keys.txt"
[[ -n "$keyring" && -n "$salt_line" ]] || die "unexpected output from sentinel keys new"
(umask 077 && printf '%s\n' "$keyring" >"$demo/master.key")
unset keyring

cat >"$demo/sentinel.toml" <<EOF
# Written by scripts/demo.sh; see deploy/sentinel.example.toml for every option.
[process]
threads = 2
shutdown_grace = "5s"

[keys]
$salt_line
# The master keyring (secret, mode 0600); rotate it with \`sentinel keys rotate\`.
master_key_file = "$demo/master.key"

[postgres]
listen = "127.0.0.1:$listen_port"
pool_mode = "transaction"
pool_size = 20

[postgres.upstream]
host = "127.0.0.1"
port = $pg_port
tls = "disable"

[tenancy]
enabled = true
# The setting the RLS policies of deploy/rls.sql read.
setting = "app.tenant_id"
# The one table of deploy/rls.sql without tenant rows: no tenant needed to read it.
global_tables = ["tenants"]
# \`sentinel run\` audits the database first and logs what would defeat RLS.
audit_on_start = "warn"

[[postgres.users]]
name = "app"
auth = "scram-sha-256"
scram_verifier = "$verifier"
server_user = "app"
EOF

say "sealing the password of role app (sentinel seal)"
sealed="$(printf '%s' "$app_password" |
    "$bin" seal --config "$demo/sentinel.toml" --for-user app 2>/dev/null)" ||
    die "sentinel seal failed"
[[ "$sealed" == sealed:v1:* ]] || die "unexpected output from sentinel seal"
# shellcheck disable=SC2016 # backquotes for the TOML comment, not a substitution
printf '# Sealed with the master keyring by `sentinel seal --for-user app`.\n' >>"$demo/sentinel.toml"
printf 'server_password_sealed = "%s"\n' "$sealed" >>"$demo/sentinel.toml"

"$bin" check-config --config "$demo/sentinel.toml" >/dev/null ||
    die "sentinel check-config rejected $demo/sentinel.toml"
"$bin" keys check --config "$demo/sentinel.toml" >/dev/null ||
    die "sentinel keys check: the keyring does not open $demo/sentinel.toml"

say "sentinel audit: does anything in database app defeat row-level security for role app?"
"$bin" audit --config "$demo/sentinel.toml" ||
    die "sentinel audit found problems (above) or could not run"

say "starting Sentinel on 127.0.0.1:$listen_port (log: $demo/sentinel.log)"
"$bin" run --config "$demo/sentinel.toml" >"$demo/sentinel.log" 2>&1 &
sentinel_pid=$!
for _ in $(seq 1 100); do
    if port_in_use "$listen_port"; then break; fi
    if ! kill -0 "$sentinel_pid" 2>/dev/null; then
        cat "$demo/sentinel.log" >&2
        die "Sentinel exited"
    fi
    sleep 0.1
done
port_in_use "$listen_port" || { cat "$demo/sentinel.log" >&2; die "Sentinel does not listen on $listen_port"; }

# Runs one statement through Sentinel as user app (its own transaction) and prints it with what
# psql answered, errors with their SQLSTATE. Returns psql's exit status.
through_sentinel() {
    printf '\n    app=> %s\n' "$1"
    local out rc=0
    out="$(PGPASSWORD="$client_password" PGCONNECT_TIMEOUT=10 "$pgbin/psql" -X -P pager=off \
        -v VERBOSITY=verbose -h 127.0.0.1 -p "$listen_port" -U app -d app -c "$1" 2>&1)" || rc=$?
    printf '%s\n' "$out" | sed 's/^/    /'
    last_output="$out"
    return "$rc"
}

say "a short session through Sentinel, as user app"
echo
echo "  1. A tenant table without a tenant: Sentinel refuses it before it reaches Postgres."
if through_sentinel "SELECT * FROM tasks"; then
    say "warning: expected ERROR 42501 tenant context required (is tenant enforcement in this build?)"
elif ! grep -q '42501' <<<"$last_output" || ! grep -q 'tenant context required' <<<"$last_output"; then
    say "warning: expected ERROR 42501 tenant context required"
fi

echo
echo "  2. The same query tagged with a tenant: it runs with app.tenant_id = 'acme' for its"
echo "     transaction, and the RLS policies return acme's rows only."
through_sentinel "/*tenant='acme'*/ SELECT * FROM tasks" || say "warning: the tagged query failed"

echo
echo "  3. A global table (tenancy.global_tables) needs no tenant."
through_sentinel "SELECT id, name FROM tenants ORDER BY id" || say "warning: the query on tenants failed"

echo
echo "  4. What each tenant sees."
for tenant in acme globex initech; do
    through_sentinel "/*tenant='$tenant'*/ SELECT p.name AS project, t.title, t.done FROM tasks t JOIN projects p ON p.id = t.project_id ORDER BY t.id" ||
        say "warning: the query for $tenant failed"
done

cat <<EOF

  Sentinel listens on 127.0.0.1:$listen_port. Connect through it with:

    psql "postgresql://app:$client_password@127.0.0.1:$listen_port/app"

  and give each statement a tenant, e.g.  /*tenant='globex'*/ SELECT * FROM open_tasks;

  Postgres itself (bypassing Sentinel, for comparison):

    psql "postgresql://postgres:$su_password@127.0.0.1:$pg_port/app"

  Config: $demo/sentinel.toml    Postgres log: $pgdir/postgres.log
  Master keyring: $demo/master.key (the config holds only the salt and sealed values)
  Sentinel's log follows ($demo/sentinel.log). Ctrl-C stops Sentinel and Postgres.

EOF

tail -n +1 -f "$demo/sentinel.log" &
tail_pid=$!
wait "$sentinel_pid" || true
sentinel_pid=""
