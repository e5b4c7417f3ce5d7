#!/usr/bin/env bash
# Sentinel in front of a throwaway Postgres, on this machine, in one command.
#
#   1. installs what is missing (scripts/setup.sh) and builds Sentinel (release);
#   2. initdb's a fresh Postgres 15 cluster under .sentinel-demo/ (as the postgres OS user when run
#      as root) on a free port, with a role `app` and a database `app`;
#   3. loads deploy/rls.sql into `app` if it exists (row-level security and sample tenants);
#   4. makes a master keyring and an environment salt with `sentinel keys new` (the keyring into
#      .sentinel-demo/master.key, mode 0600), seals the upstream password of role `app` with
#      `sentinel seal`, and writes .sentinel-demo/sentinel.toml with the salt, the key file and the
#      sealed password (no plaintext password in the config);
#   5. runs `sentinel run` in the foreground on 127.0.0.1:6432 (or $SENTINEL_DEMO_PORT), after
#      printing the psql line to connect through it.
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

stop_postgres() {
    if [[ -f "$pgdir/data/postmaster.pid" ]]; then
        say "stopping Postgres"
        (cd "$pgdir" && pg pg_ctl stop -D "$pgdir/data" -m fast -w >/dev/null 2>&1) || true
    fi
}
trap stop_postgres EXIT
trap 'exit 130' INT TERM

say "starting Postgres on 127.0.0.1:$pg_port"
(cd "$pgdir" && pg pg_ctl start -D "$pgdir/data" -l "$pgdir/postgres.log" -w -s \
    -o "-p $pg_port -k $pgdir/sock -c listen_addresses=127.0.0.1") ||
    { cat "$pgdir/postgres.log" >&2; die "Postgres did not start"; }

psql_su() {
    PGPASSWORD="$su_password" "$pgbin/psql" -X -q -v ON_ERROR_STOP=1 \
        -h 127.0.0.1 -p "$pg_port" -U postgres "$@"
}
say "creating role app and database app"
psql_su -d postgres -c "CREATE ROLE app LOGIN NOSUPERUSER PASSWORD '$app_password'" \
    -c "CREATE DATABASE app OWNER app" >/dev/null

# Row-level security and sample tenants (see deploy/): loaded when the file exists.
if [[ -f deploy/rls.sql ]]; then
    say "loading deploy/rls.sql into app"
    psql_su -d app -f deploy/rls.sql >/dev/null
fi

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
printf '# Sealed with the master keyring by `sentinel seal --for-user app`.\n' >>"$demo/sentinel.toml"
printf 'server_password_sealed = "%s"\n' "$sealed" >>"$demo/sentinel.toml"

"$bin" check-config --config "$demo/sentinel.toml" >/dev/null ||
    die "sentinel check-config rejected $demo/sentinel.toml"
"$bin" keys check --config "$demo/sentinel.toml" >/dev/null ||
    die "sentinel keys check: the keyring does not open $demo/sentinel.toml"

cat <<EOF

  Sentinel will listen on 127.0.0.1:$listen_port. Connect through it with:

    psql "postgresql://app:$client_password@127.0.0.1:$listen_port/app"

  Postgres itself (bypassing Sentinel, for comparison):

    psql "postgresql://postgres:$su_password@127.0.0.1:$pg_port/app"

  Config: $demo/sentinel.toml    Postgres log: $pgdir/postgres.log
  Master keyring: $demo/master.key (the config holds only the salt and sealed values)
  Ctrl-C stops Sentinel and Postgres.

EOF

"$bin" run --config "$demo/sentinel.toml"
