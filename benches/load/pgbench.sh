#!/usr/bin/env bash
# pgbench select-only: direct to Postgres vs through Sentinel vs through PgBouncer, in one run, on
# this machine, on loopback only.
#
#   1. initdb's a throwaway Postgres 15 cluster in a temp dir (as the postgres OS user when run as
#      root) on a free port: fsync=off, max_connections=300, shared_buffers=128MB, trust on
#      loopback; creates role and database `bench`; `pgbench -i -s 10`.
#   2. starts two Sentinels (release build; `cargo build` first, a no-op when up to date) - one a
#      plain pooler (tenancy off), one enforcing tenant context - and PgBouncer, all in transaction
#      mode with the same pool size, each on a free loopback port, in front of that cluster.
#   3. for each protocol (simple, extended, prepared) and client count, runs
#      `pgbench -S -n -j 2 -c C -T DURATION -M PROTOCOL` against direct, Sentinel and PgBouncer,
#      and against the enforcing Sentinel the same select with a tenant tag
#      (`/*tenant='t7'*/ SELECT abalance ...`, one of TENANTS scripts picked at random per
#      transaction), so Sentinel classifies each statement and sets the tenant in its transaction.
#   4. prints the machine, the versions and a Markdown table (tps, average latency, ratios, errors).
# Everything it started is stopped and its temp dir removed on exit, however it exits.
#
# Environment (all optional):
#   POOL_SIZE=20          Sentinel pool_size and PgBouncer default_pool_size
#   CLIENTS="16 64"       pgbench client counts
#   PROTOCOLS="simple extended prepared"
#   DURATION=10           seconds per pgbench run
#   WARMUP=2              seconds of warm-up per target before the measured runs (0: none)
#   SCALE=10              pgbench -i scale factor
#   THREADS=2             Sentinel [process] threads
#   TENANTS=16            distinct tenants in the tagged runs (one pgbench script each)
#   SENTINEL_BIN=path     use this binary instead of target/release/sentinel (never built then)
#   KEEP_LOGS=dir         copy the logs (Sentinel, PgBouncer, Postgres, every pgbench output) there
#   SKIP_BUILD=1          do not run `cargo build --release -p sentinel` when the binary exists
#   MAX_LOAD=1.5          if set: before starting, wait (up to MAX_LOAD_WAIT=600 s) until the
#                         1-minute load average is at most this and no rustc (another build) runs;
#                         figures are noisy otherwise
#
# Exit status: 0 when every direct and Sentinel run finished without errors, 1 otherwise (the
# table is printed either way). PgBouncer in prepared mode failing is expected and reported as n/a.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
if ! command -v cargo >/dev/null 2>&1 && [[ -x "$HOME/.cargo/bin/cargo" ]]; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi

POOL_SIZE="${POOL_SIZE:-20}"
CLIENTS="${CLIENTS:-16 64}"
PROTOCOLS="${PROTOCOLS:-simple extended prepared}"
DURATION="${DURATION:-10}"
WARMUP="${WARMUP:-2}"
SCALE="${SCALE:-10}"
THREADS="${THREADS:-2}"
TENANTS="${TENANTS:-16}"
MAX_LOAD="${MAX_LOAD:-}"
MAX_LOAD_WAIT="${MAX_LOAD_WAIT:-600}"

pgbin=/usr/lib/postgresql/15/bin
pgbouncer_bin="${PGBOUNCER_BIN:-/usr/sbin/pgbouncer}"
pgbench_bin="$pgbin/pgbench"
psql_bin="$pgbin/psql"

say() { printf '[pgbench.sh] %s\n' "$*" >&2; }
die() { printf '[pgbench.sh] error: %s\n' "$*" >&2; exit 2; }

for n in POOL_SIZE DURATION WARMUP SCALE THREADS TENANTS MAX_LOAD_WAIT; do
    [[ "${!n}" =~ ^[0-9]+$ ]] || die "$n must be a whole number (got '${!n}')"
done
for c in $CLIENTS; do [[ "$c" =~ ^[1-9][0-9]*$ ]] || die "CLIENTS must be whole numbers (got '$c')"; done
for p in $PROTOCOLS; do
    case "$p" in simple | extended | prepared) ;; *) die "unknown protocol '$p'" ;; esac
done
[[ -x "$pgbin/initdb" ]] || die "no Postgres 15 at $pgbin (scripts/setup.sh installs it)"
[[ -x "$pgbench_bin" ]] || die "no pgbench at $pgbench_bin"
[[ -x "$pgbouncer_bin" ]] || die "no pgbouncer at $pgbouncer_bin (scripts/setup.sh installs it)"
command -v python3 >/dev/null || die "python3 is needed (free ports)"

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
load1() { cut -d' ' -f1 /proc/loadavg; }

# --- temp dir and cleanup -------------------------------------------------------------------------

tmp="$(mktemp -d /tmp/sentinel-pgbench.XXXXXX)"
chmod 755 "$tmp"
pgdata="$tmp/pg/data"
pgsock="$tmp/pg"
bouncer_dir="$tmp/pgbouncer"
results="$tmp/results"
mkdir -p "$pgsock" "$bouncer_dir" "$results"

# Postgres and PgBouncer refuse to run as root: run them as the postgres OS user then.
as_pg=()
if [[ "$(id -u)" -eq 0 ]]; then
    as_pg=(runuser -u postgres --)
    chown -R postgres:postgres "$tmp/pg" "$bouncer_dir"
fi

sentinel_pid=""
tenancy_pid=""
pg_started=0
cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    if [[ -f "$bouncer_dir/pgbouncer.pid" ]]; then
        local bpid
        bpid="$(cat "$bouncer_dir/pgbouncer.pid" 2>/dev/null)"
        if [[ -n "$bpid" ]]; then
            kill -INT "$bpid" 2>/dev/null
            for _ in $(seq 50); do kill -0 "$bpid" 2>/dev/null || break; sleep 0.1; done
            kill -KILL "$bpid" 2>/dev/null
        fi
    fi
    for pid in $sentinel_pid $tenancy_pid; do
        kill -TERM "$pid" 2>/dev/null
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
    done
    if ((pg_started)); then
        (cd "$tmp" && "${as_pg[@]}" "$pgbin/pg_ctl" stop -D "$pgdata" -m fast -w -t 30 >/dev/null 2>&1) ||
            (cd "$tmp" && "${as_pg[@]}" "$pgbin/pg_ctl" stop -D "$pgdata" -m immediate -w >/dev/null 2>&1)
    fi
    if [[ -n "${KEEP_LOGS:-}" ]]; then
        mkdir -p "$KEEP_LOGS" &&
            cp -r "$results" "$tmp/sentinel.log" "$tmp/sentinel.toml" "$tmp/sentinel-tenancy.log" \
                "$tmp/sentinel-tenancy.toml" "$bouncer_dir/pgbouncer.log" \
                "$bouncer_dir/pgbouncer.ini" "$pgsock/postgres.log" "$KEEP_LOGS/" 2>/dev/null
    fi
    rm -rf "$tmp"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- Sentinel binary ----------------------------------------------------------------------------

# The figures are only worth something for the code in this tree: cargo rebuilds when a source
# changed (a no-op otherwise). SKIP_BUILD=1 uses the binary as it is; SENTINEL_BIN never builds.
commit="$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [[ -n "$(git -C "$repo" status --porcelain --untracked-files=no 2>/dev/null)" ]]; then
    commit="$commit + uncommitted changes"
fi
if [[ -n "${SENTINEL_BIN:-}" ]]; then
    sentinel_bin="$SENTINEL_BIN"
    build_note="prebuilt $sentinel_bin"
else
    sentinel_bin="${CARGO_TARGET_DIR:-$repo/target}/release/sentinel"
    build_note="built from $commit"
    if [[ -z "${SKIP_BUILD:-}" || ! -x "$sentinel_bin" ]]; then
        say "building sentinel (release; a no-op when it is up to date)"
        if ! (cd "$repo" && cargo build --release -q -p sentinel); then
            [[ -x "$sentinel_bin" ]] || die "cargo build --release -p sentinel failed"
            say "WARNING: the build failed: measuring the existing, possibly stale, $sentinel_bin"
            build_note="STALE binary: the build of $commit failed"
        fi
    else
        build_note="existing binary (SKIP_BUILD), built $(date -u -r "$sentinel_bin" '+%Y-%m-%d %H:%M UTC')"
    fi
fi
[[ -x "$sentinel_bin" ]] || die "no sentinel binary at $sentinel_bin"

# --- load ---------------------------------------------------------------------------------------

if [[ -n "$MAX_LOAD" ]]; then
    waited=0
    busy_machine() {
        pgrep -x rustc >/dev/null 2>&1 || awk -v l="$(load1)" -v m="$MAX_LOAD" 'BEGIN { exit !(l > m) }'
    }
    while busy_machine; do
        if ((waited >= MAX_LOAD_WAIT)); then
            say "load average $(load1) (limit $MAX_LOAD) or a build still running after ${waited}s: running anyway"
            break
        fi
        say "load average $(load1) (limit $MAX_LOAD), rustc running: $(pgrep -x rustc >/dev/null 2>&1 && echo yes || echo no); waiting (${waited}s so far)"
        sleep 30
        waited=$((waited + 30))
    done
fi
load_before="$(cut -d' ' -f1-3 /proc/loadavg)"

# --- Postgres -----------------------------------------------------------------------------------

pg_port="$(free_port)"
say "initdb into $pgdata (port $pg_port)"
(cd "$tmp" && "${as_pg[@]}" "$pgbin/initdb" -D "$pgdata" -U postgres --auth=trust --encoding=UTF8 \
    --locale=C >"$results/initdb.log" 2>&1) || { cat "$results/initdb.log" >&2; die "initdb failed"; }
cat >>"$pgdata/postgresql.conf" <<EOF

# sentinel benches/load/pgbench.sh
listen_addresses = '127.0.0.1'
port = $pg_port
unix_socket_directories = '$pgsock'
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 300
shared_buffers = 128MB
EOF
# Trust on loopback only (initdb --auth=trust wrote host lines for 127.0.0.1/32 and ::1/128).
pg_started=1
(cd "$tmp" && "${as_pg[@]}" "$pgbin/pg_ctl" start -D "$pgdata" -l "$pgsock/postgres.log" -w -t 60 \
    >/dev/null) || { cat "$pgsock/postgres.log" >&2; die "Postgres did not start"; }

psql_admin() { "$psql_bin" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$pg_port" -U postgres -d postgres "$@"; }
psql_admin -c "CREATE ROLE bench LOGIN" -c "CREATE DATABASE bench OWNER bench"
say "pgbench -i -s $SCALE"
"$pgbench_bin" -i -q -s "$SCALE" -h 127.0.0.1 -p "$pg_port" -U bench bench >"$results/init.log" 2>&1 ||
    { cat "$results/init.log" >&2; die "pgbench -i failed"; }
psql_admin -d bench -c "VACUUM ANALYZE" >/dev/null

# --- Sentinel -----------------------------------------------------------------------------------

sentinel_port="$(free_port)"
admin_port="$(free_port)"
# Builds with [keys] need a salt in the config and a master keyring in SENTINEL_MASTER_KEY: a
# throwaway pair per run, made by `sentinel keys new` (never printed; nothing here is sealed).
keys_section=""
master_key=""
if "$sentinel_bin" keys new --help >/dev/null 2>&1; then
    keys_out="$("$sentinel_bin" keys new 2>/dev/null)" || die "sentinel keys new failed"
    master_key="$(sed -n 's/^SENTINEL_MASTER_KEY=//p' <<<"$keys_out")"
    salt_line="$(grep -m1 '^salt = ' <<<"$keys_out")" || true
    [[ -n "$master_key" && -n "$salt_line" ]] || die "unexpected output from sentinel keys new"
    keys_section="[keys]
$salt_line
"
fi
cat >"$tmp/sentinel.toml" <<EOF
[process]
threads = $THREADS
shutdown_grace = "1s"

$keys_section

[postgres]
listen = "127.0.0.1:$sentinel_port"
pool_mode = "transaction"
max_client_conn = 500
pool_size = $POOL_SIZE

[postgres.upstream]
host = "127.0.0.1"
port = $pg_port
tls = "disable"

[[postgres.users]]
name = "bench"
auth = "trust"

[tenancy]
enabled = false

[admin]
listen = "127.0.0.1:$admin_port"
EOF
# The enforcing one: the same, on other ports, with tenancy on (pgbench's tables are tenant
# tables to it: every select needs its tag).
tenancy_port="$(free_port)"
tenancy_admin_port="$(free_port)"
sed -e "s/127.0.0.1:$sentinel_port/127.0.0.1:$tenancy_port/" \
    -e "s/127.0.0.1:$admin_port/127.0.0.1:$tenancy_admin_port/" \
    -e 's/^enabled = false$/enabled = true\nsources = ["comment"]/' \
    "$tmp/sentinel.toml" >"$tmp/sentinel-tenancy.toml"
start_sentinel() { # config log; the pid is in $! afterwards
    if [[ -n "$master_key" ]]; then
        SENTINEL_MASTER_KEY="$master_key" "$sentinel_bin" run --config "$1" >"$2" 2>&1 &
    else
        "$sentinel_bin" run --config "$1" >"$2" 2>&1 &
    fi
}
say "starting sentinel on 127.0.0.1:$sentinel_port (pool_size $POOL_SIZE, threads $THREADS)"
start_sentinel "$tmp/sentinel.toml" "$tmp/sentinel.log"
sentinel_pid=$!
say "starting sentinel with tenancy on 127.0.0.1:$tenancy_port"
start_sentinel "$tmp/sentinel-tenancy.toml" "$tmp/sentinel-tenancy.log"
tenancy_pid=$!
# One script per tenant, each pgbench's select-only statement with that tenant's tag; pgbench
# picks one at random for each transaction.
tenant_scripts=()
for i in $(seq "$TENANTS"); do
    f="$results/tenant-$i.sql"
    printf '%s\n' '\set aid random(1, 100000 * :scale)' \
        "/*tenant='t$i'*/ SELECT abalance FROM pgbench_accounts WHERE aid = :aid;" >"$f"
    tenant_scripts+=(-f "$f@1")
done

# --- PgBouncer ----------------------------------------------------------------------------------

bouncer_port="$(free_port)"
printf '"bench" ""\n' >"$bouncer_dir/userlist.txt"
cat >"$bouncer_dir/pgbouncer.ini" <<EOF
[databases]
bench = host=127.0.0.1 port=$pg_port dbname=bench

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $bouncer_port
unix_socket_dir =
auth_type = trust
auth_file = $bouncer_dir/userlist.txt
pool_mode = transaction
default_pool_size = $POOL_SIZE
max_client_conn = 500
ignore_startup_parameters = extra_float_digits
logfile = $bouncer_dir/pgbouncer.log
pidfile = $bouncer_dir/pgbouncer.pid
EOF
if ((${#as_pg[@]})); then chown postgres:postgres "$bouncer_dir"/*; fi
say "starting pgbouncer on 127.0.0.1:$bouncer_port (default_pool_size $POOL_SIZE)"
(cd "$tmp" && "${as_pg[@]}" "$pgbouncer_bin" -d -q "$bouncer_dir/pgbouncer.ini") ||
    { cat "$bouncer_dir/pgbouncer.log" >&2 2>/dev/null; die "pgbouncer did not start"; }

# Both answer a real query before anything is measured.
wait_ready() { # name port
    for _ in $(seq 100); do
        if "$psql_bin" -X -q -t -A -h 127.0.0.1 -p "$2" -U bench -d bench -c "SELECT 1" >/dev/null 2>&1; then
            return 0
        fi
        if [[ "$1" == sentinel ]] && ! kill -0 "$sentinel_pid" 2>/dev/null; then
            cat "$tmp/sentinel.log" >&2
            die "sentinel exited"
        fi
        if [[ "$1" == tenancy ]] && ! kill -0 "$tenancy_pid" 2>/dev/null; then
            cat "$tmp/sentinel-tenancy.log" >&2
            die "sentinel (tenancy) exited"
        fi
        sleep 0.2
    done
    [[ "$1" == sentinel ]] && tail -n 30 "$tmp/sentinel.log" >&2
    [[ "$1" == pgbouncer ]] && tail -n 30 "$bouncer_dir/pgbouncer.log" >&2
    die "$1 on port $2 did not answer SELECT 1 within 20s"
}
wait_ready sentinel "$sentinel_port"
wait_ready tenancy "$tenancy_port"
wait_ready pgbouncer "$bouncer_port"

# --- runs ---------------------------------------------------------------------------------------

declare -A port=([direct]="$pg_port" [sentinel]="$sentinel_port" [tenancy]="$tenancy_port"
    [pgbouncer]="$bouncer_port")
targets=(direct sentinel tenancy pgbouncer)

# run_pgbench TARGET PROTOCOL CLIENTS SECONDS OUTFILE; never fails (the status goes into OUTFILE.rc)
run_pgbench() {
    local rc=0 workload=(-S)
    [[ "$1" == tenancy ]] && workload=("${tenant_scripts[@]}" -D "scale=$SCALE")
    timeout --kill-after=10 $(($4 + 60)) \
        "$pgbench_bin" -h 127.0.0.1 -p "${port[$1]}" -U bench -n "${workload[@]}" -j 2 -c "$3" \
        -T "$4" -M "$2" --max-tries=1 bench >"$5" 2>&1 || rc=$?
    echo "$rc" >"$5.rc"
}

if ((WARMUP > 0)); then
    say "warm-up: ${WARMUP}s per target"
    maxc=0
    for c in $CLIENTS; do ((c > maxc)) && maxc=$c; done
    for t in "${targets[@]}"; do run_pgbench "$t" simple "$maxc" "$WARMUP" "$results/warmup-$t.out"; done
fi

declare -A tps lat errs status
failed_any=0
notes=()
disturbed=()
for p in $PROTOCOLS; do
    for c in $CLIENTS; do
        for t in "${targets[@]}"; do
            out="$results/$p-$c-$t.out"
            say "$p, $c clients, $t (${DURATION}s)"
            k="$p/$c/$t"
            # Other builds on the machine disturb the figures: note the runs that shared it with one.
            busy=0
            pgrep -x rustc >/dev/null 2>&1 && busy=1
            run_pgbench "$t" "$p" "$c" "$DURATION" "$out"
            pgrep -x rustc >/dev/null 2>&1 && busy=1
            ((busy)) && disturbed+=("$t $p $c")
            rc="$(cat "$out.rc")"
            tps[$k]="$(awk '/^tps = /{ printf "%.0f", $3; exit }' "$out")"
            lat[$k]="$(awk '/^latency average = /{ print $4; exit }' "$out")"
            failed="$(awk '/^number of failed transactions:/{ print $5; exit }' "$out")"
            aborted="$(grep -cE 'client [0-9]+ .*aborted' "$out" || true)"
            errs[$k]="${failed:-?}/${aborted}"
            if [[ "$rc" == 0 && "${failed:-0}" == 0 && "$aborted" == 0 && -n "${tps[$k]}" ]]; then
                status[$k]=ok
            else
                status[$k]=error
                first="$(grep -m1 -E 'error|ERROR|FATAL|aborted' "$out" || tail -n1 "$out")"
                if [[ "$t" == pgbouncer && "$p" == prepared ]]; then
                    notes+=("PgBouncer, prepared, $c clients: failed as expected (exit $rc, $aborted clients aborted): $first")
                else
                    failed_any=1
                    notes+=("**$t, $p, $c clients: exit $rc, ${failed:-?} failed transactions, $aborted clients aborted**: $first")
                fi
            fi
        done
    done
done
load_after="$(cut -d' ' -f1-3 /proc/loadavg)"

# --- report -------------------------------------------------------------------------------------

ratio() { # a b -> a/b with two decimals, or n/a
    awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || b + 0 == 0) print "n/a"; else printf "%.2f", a / b }'
}
cell() { # key -> tps or ERR
    if [[ "${status[$1]}" == ok ]]; then echo "${tps[$1]}"; else echo "ERR (${tps[$1]:-none})"; fi
}
latcell() { if [[ "${status[$1]}" == ok ]]; then echo "${lat[$1]}"; else echo "ERR"; fi; }
okval() { if [[ "${status[$1]}" == ok ]]; then echo "${tps[$1]}"; fi; }

cpu_model="$(awk -F': *' '/^model name/{ print $2; exit }' /proc/cpuinfo)"
[[ -n "$cpu_model" ]] || cpu_model="$(lscpu 2>/dev/null | awk -F': *' '/Model name/{ print $2; exit }')"

echo
echo "### pgbench select-only: direct vs Sentinel vs PgBouncer"
echo
echo "\"sentinel+tenancy\": Sentinel enforcing tenant context, each select carrying a tenant tag"
echo "(one of $TENANTS tenants at random per transaction), so every transaction is classified and"
echo "gets the tenant set in it. The other columns run plain \`pgbench -S\`."
echo
echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "- machine: $(nproc) CPUs, ${cpu_model:-unknown CPU}, $(uname -sr)"
echo "- load average (1/5/15 min): before $load_before, after $load_after"
echo "- versions: $("$pgbin/postgres" --version), $("$pgbench_bin" --version | head -n1)," \
    "$("$pgbouncer_bin" --version | head -n1), $("$sentinel_bin" --version) ($build_note)"
echo "- setup: scale $SCALE, pool size $POOL_SIZE (Sentinel pool_size, PgBouncer default_pool_size)," \
    "transaction pooling, Sentinel threads $THREADS, \`pgbench -S -n -j 2 -T $DURATION\`," \
    "everything on loopback on this machine (warm-up ${WARMUP}s per target)"
echo
echo "| protocol | clients | tps direct | tps sentinel | tps sentinel+tenancy | tps pgbouncer | lat direct (ms) | lat sentinel (ms) | lat sentinel+tenancy (ms) | lat pgbouncer (ms) | sentinel/direct | sentinel/pgbouncer | sentinel+tenancy/pgbouncer | failed/aborted (d, s, s+t, p) |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
for p in $PROTOCOLS; do
    for c in $CLIENTS; do
        d="$p/$c/direct" s="$p/$c/sentinel" t="$p/$c/tenancy" b="$p/$c/pgbouncer"
        if [[ "$p" == prepared && "${status[$b]}" != ok ]]; then
            bt="n/a (PgBouncer 1.18 has no prepared statements in transaction mode)"
            bl="n/a"
            sb="n/a"
            tb="n/a"
        else
            bt="$(cell "$b")"
            bl="$(latcell "$b")"
            sb="$(ratio "$(okval "$s")" "$(okval "$b")")"
            tb="$(ratio "$(okval "$t")" "$(okval "$b")")"
        fi
        printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s, %s, %s, %s |\n' \
            "$p" "$c" "$(cell "$d")" "$(cell "$s")" "$(cell "$t")" "$bt" "$(latcell "$d")" \
            "$(latcell "$s")" "$(latcell "$t")" "$bl" "$(ratio "$(okval "$s")" "$(okval "$d")")" \
            "$sb" "$tb" "${errs[$d]}" "${errs[$s]}" "${errs[$t]}" "${errs[$b]}"
    done
done
echo
echo "tps excludes initial connection time; latency is pgbench's average per transaction;"
echo "failed/aborted = failed transactions / clients aborted by an error, per target."
echo "The load average after includes this benchmark's own clients and backends."
if ((${#disturbed[@]})); then
    list="$(printf '%s; ' "${disturbed[@]}")"
    echo "A rustc process (another build) was running at the start or end of ${#disturbed[@]} runs: ${list%; }."
else
    echo "No rustc process (another build) was seen at the start or end of any run."
fi
if ((${#notes[@]})); then
    echo
    echo "Notes:"
    for n in "${notes[@]}"; do echo "- $n"; done
fi
if ((failed_any)); then
    echo
    echo "Sentinel log (last 40 lines):"
    echo '```'
    tail -n 40 "$tmp/sentinel.log"
    echo '```'
    echo "Sentinel (tenancy) log (last 40 lines):"
    echo '```'
    tail -n 40 "$tmp/sentinel-tenancy.log"
    echo '```'
    exit 1
fi
