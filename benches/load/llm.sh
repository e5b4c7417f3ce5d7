#!/usr/bin/env bash
# LLM egress: chat completions direct to a mock provider vs through Sentinel, in one run, on this
# machine, on loopback only.
#
#   1. builds the release binaries (`cargo build --release -p sentinel -p sentinel-tests --bin
#      sentinel --bin mock_llm`; a no-op when up to date; honours CARGO_TARGET_DIR) and installs
#      `wrk` (Debian package) when it is missing.
#   2. starts the mock provider (`mock_llm --port 0`) and a Sentinel whose [llm] egress routes
#      `gpt-4o` (shipped price, o200k estimate) to it, tenant `bench` with a $1,000,000 budget and
#      no rate limit, the in-memory ledger (`[ledger] backend = "memory"`: no ledger round
#      trip); a virtual key from `sentinel vkey issue`. Its
#      [postgres] side has one trust user and an upstream port nobody listens on (unused here).
#   3. for each request kind (non-streamed and streamed chat completions) and client count, runs
#      `wrk` for DURATION seconds against the mock directly (with the provider key) and through
#      Sentinel (with the virtual key), one after the other, the same body and headers otherwise.
#   4. prints the machine, the versions and a Markdown table: requests/s, latency p50/p99, the
#      ratio Sentinel/direct, the added latency (Sentinel minus direct, per percentile) and
#      Sentinel's CPU time per request.
# Everything it started is stopped and its temp dir removed on exit, however it exits.
#
# What the mock does that shapes the figures (tests/src/mock_llm/stream.rs): it writes a JSON
# answer in two halves 2 ms apart, and splits every other SSE event in two writes 2 ms apart, on
# purpose (so proxies see events straddle reads). So a non-streamed call takes at least ~2 ms
# and a stream of N chunks at least ~N ms, direct or not; the added latency is what to read.
# `x-mock-chunk-delay-ms: 0` removes the mock's other pause between events. The request asks for
# `stream_options.include_usage` itself, so the mock sends the same events to both targets (and
# Sentinel has no body to rewrite and no usage chunk to hide).
#
# Environment (all optional):
#   CLIENTS="1 16"        wrk connections (concurrent clients), one run per count
#   KINDS="json stream"   json: non-streamed chat completions; stream: streamed
#   DURATION=10           seconds per wrk run
#   WARMUP=2              seconds of warm-up per target and kind before the measured runs (0: none)
#   PROMPT_BYTES=2000     size of the prompt text in the request body (about 400 o200k tokens)
#   OUTPUT_TOKENS=50      words the mock answers (and the usage it reports)
#   STREAM_CHUNKS=50      content events per stream
#   THREADS=2             Sentinel [process] threads
#   WRK_THREADS=1         wrk threads (-t); at most the smallest client count
#   SENTINEL_BIN=path     use this binary instead of $CARGO_TARGET_DIR/release/sentinel
#   MOCK_BIN=path         use this binary instead of $CARGO_TARGET_DIR/release/mock_llm
#   SKIP_BUILD=1          do not run cargo build when the binaries exist
#   KEEP_LOGS=dir         copy the logs (Sentinel, mock, every wrk output, the config) there
#   MAX_LOAD=1.5          if set: before starting, wait (up to MAX_LOAD_WAIT=600 s) until the
#                         1-minute load average is at most this and no rustc (another build) runs
#
# Exit status: 0 when every run finished without an error (non-2xx answer, socket error),
# 1 otherwise (the table is printed either way), 2 when it could not set up.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
if ! command -v cargo >/dev/null 2>&1 && [[ -x "$HOME/.cargo/bin/cargo" ]]; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi

CLIENTS="${CLIENTS:-1 16}"
KINDS="${KINDS:-json stream}"
DURATION="${DURATION:-10}"
WARMUP="${WARMUP:-2}"
PROMPT_BYTES="${PROMPT_BYTES:-2000}"
OUTPUT_TOKENS="${OUTPUT_TOKENS:-50}"
STREAM_CHUNKS="${STREAM_CHUNKS:-50}"
THREADS="${THREADS:-2}"
WRK_THREADS="${WRK_THREADS:-1}"
MAX_LOAD="${MAX_LOAD:-}"
MAX_LOAD_WAIT="${MAX_LOAD_WAIT:-600}"

say() { printf '[llm.sh] %s\n' "$*" >&2; }
die() { printf '[llm.sh] error: %s\n' "$*" >&2; exit 2; }

for n in DURATION WARMUP PROMPT_BYTES OUTPUT_TOKENS STREAM_CHUNKS THREADS WRK_THREADS MAX_LOAD_WAIT; do
    [[ "${!n}" =~ ^[0-9]+$ ]] || die "$n must be a whole number (got '${!n}')"
done
((DURATION > 0)) || die "DURATION must be at least 1"
((WRK_THREADS > 0)) || die "WRK_THREADS must be at least 1"
for c in $CLIENTS; do
    [[ "$c" =~ ^[1-9][0-9]*$ ]] || die "CLIENTS must be whole numbers (got '$c')"
    ((c >= WRK_THREADS)) || die "every client count must be at least WRK_THREADS ($WRK_THREADS)"
done
for k in $KINDS; do
    case "$k" in json | stream) ;; *) die "unknown kind '$k' (json, stream)" ;; esac
done
command -v python3 >/dev/null || die "python3 is needed (free ports, request bodies)"
command -v curl >/dev/null || die "curl is needed (readiness checks)"

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
load1() { cut -d' ' -f1 /proc/loadavg; }

# --- wrk ----------------------------------------------------------------------------------------

if ! command -v wrk >/dev/null 2>&1; then
    as_root=()
    if [[ "$(id -u)" -ne 0 ]]; then
        command -v sudo >/dev/null 2>&1 || die "wrk is missing and neither root nor sudo: apt-get install wrk"
        as_root=(sudo)
    fi
    say "installing wrk (apt-get)"
    apt_log="$(mktemp)"
    if ! { "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -q install -y \
        -o DPkg::Lock::Timeout=300 --no-install-recommends wrk >"$apt_log" 2>&1 ||
        { "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -q update >>"$apt_log" 2>&1 &&
            "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -q install -y \
                -o DPkg::Lock::Timeout=300 --no-install-recommends wrk >>"$apt_log" 2>&1; }; }; then
        cat "$apt_log" >&2
        rm -f "$apt_log"
        die "apt-get install wrk failed"
    fi
    rm -f "$apt_log"
fi
wrk_bin="$(command -v wrk)"

# --- temp dir and cleanup -------------------------------------------------------------------------

tmp="$(mktemp -d /tmp/sentinel-llmbench.XXXXXX)"
results="$tmp/results"
mkdir -p "$results"

mock_pid=""
sentinel_pid=""
stop_pid() { # pid: TERM, wait up to 5 s, KILL
    local pid="$1"
    [[ -n "$pid" ]] || return 0
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
}
cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    stop_pid "$sentinel_pid"
    stop_pid "$mock_pid"
    if [[ -n "${KEEP_LOGS:-}" ]]; then
        mkdir -p "$KEEP_LOGS" &&
            cp -r "$results" "$tmp/sentinel.log" "$tmp/sentinel.toml" "$tmp/mock.log" \
                "$tmp"/*.lua "$tmp"/body-*.json "$KEEP_LOGS/" 2>/dev/null
    fi
    rm -rf "$tmp"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- binaries -----------------------------------------------------------------------------------

commit="$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [[ -n "$(git -C "$repo" status --porcelain --untracked-files=no 2>/dev/null)" ]]; then
    commit="$commit + uncommitted changes"
fi
target_dir="${CARGO_TARGET_DIR:-$repo/target}"
sentinel_bin="${SENTINEL_BIN:-$target_dir/release/sentinel}"
mock_bin="${MOCK_BIN:-$target_dir/release/mock_llm}"
build_note="built from $commit"
if [[ -n "${SENTINEL_BIN:-}" ]]; then
    build_note="prebuilt $sentinel_bin"
fi
if [[ -z "${SENTINEL_BIN:-}" || -z "${MOCK_BIN:-}" ]]; then
    if [[ -z "${SKIP_BUILD:-}" || ! -x "$sentinel_bin" || ! -x "$mock_bin" ]]; then
        say "building sentinel and mock_llm (release; a no-op when up to date)"
        if ! (cd "$repo" && cargo build --release -q -p sentinel -p sentinel-tests \
            --bin sentinel --bin mock_llm); then
            [[ -x "$sentinel_bin" && -x "$mock_bin" ]] || die "cargo build --release failed"
            say "WARNING: the build failed: measuring the existing, possibly stale, binaries"
            build_note="STALE binary: the build of $commit failed"
        fi
    elif [[ -z "${SENTINEL_BIN:-}" ]]; then
        build_note="existing binary (SKIP_BUILD), built $(date -u -r "$sentinel_bin" '+%Y-%m-%d %H:%M UTC')"
    fi
fi
[[ -x "$sentinel_bin" ]] || die "no sentinel binary at $sentinel_bin"
[[ -x "$mock_bin" ]] || die "no mock_llm binary at $mock_bin"

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

# --- mock provider ------------------------------------------------------------------------------

openai_key="sk-real-openai" # the mock's default OpenAI key
say "starting mock_llm"
"$mock_bin" --port 0 --openai-key "$openai_key" >"$tmp/mock.out" 2>"$tmp/mock.log" &
mock_pid=$!
mock_port=""
for _ in $(seq 100); do
    mock_port="$(sed -n 's/^PORT \([0-9][0-9]*\)$/\1/p' "$tmp/mock.out" 2>/dev/null | head -n1)"
    [[ -n "$mock_port" ]] && break
    kill -0 "$mock_pid" 2>/dev/null || { cat "$tmp/mock.log" >&2; die "mock_llm exited"; }
    sleep 0.1
done
[[ -n "$mock_port" ]] || die "mock_llm did not print its port within 10s"
mock_url="http://127.0.0.1:$mock_port"

# --- Sentinel -----------------------------------------------------------------------------------

keys_out="$("$sentinel_bin" keys new 2>/dev/null)" || die "sentinel keys new failed"
master_key="$(sed -n 's/^SENTINEL_MASTER_KEY=//p' <<<"$keys_out")"
salt_line="$(grep -m1 '^salt = ' <<<"$keys_out")" || true
[[ -n "$master_key" && -n "$salt_line" ]] || die "unexpected output from sentinel keys new"

pg_port="$(free_port)"
pg_upstream_port="$(free_port)" # nobody listens there: the Postgres side is not used
llm_port="$(free_port)"
admin_port="$(free_port)"
# The in-memory ledger: the figures leave out the ledger's round trip, as the design's goal does.
# Builds from before [ledger] existed use it without being asked (and refuse the section).
ledger_section='[ledger]
backend = "memory"'
write_config() {
    cat >"$tmp/sentinel.toml" <<EOF
[process]
threads = $THREADS
shutdown_grace = "1s"

[keys]
$salt_line

[postgres]
listen = "127.0.0.1:$pg_port"

[postgres.upstream]
host = "127.0.0.1"
port = $pg_upstream_port
tls = "disable"

[[postgres.users]]
name = "bench"
auth = "trust"

[admin]
listen = "127.0.0.1:$admin_port"

[llm]
listen = "127.0.0.1:$llm_port"
connect_timeout = "2s"
first_byte_timeout = "30s"
idle_timeout = "30s"
total_timeout = "60s"
connect_retries = 1

[[llm.providers]]
name = "openai"
kind = "openai"
base_url = "$mock_url/v1"
models = ["gpt-4o"]
api_key_env = "SENTINEL_BENCH_OPENAI_KEY"

[llm.tenants.bench]
budget_usd = "1000000"
period = "total"

$ledger_section
EOF
}
export SENTINEL_BENCH_OPENAI_KEY="$openai_key"
issue_vkey() {
    SENTINEL_MASTER_KEY="$master_key" "$sentinel_bin" vkey issue --tenant bench \
        --config "$tmp/sentinel.toml" 2>"$results/vkey.err"
}
write_config
if ! vkey="$(issue_vkey)"; then
    if grep -q 'ledger' "$results/vkey.err"; then
        ledger_section="" # a build without [ledger]
        write_config
    fi
    vkey="$(issue_vkey)" || { cat "$results/vkey.err" >&2; die "sentinel vkey issue failed"; }
fi
[[ "$vkey" == sk-stn-* ]] || die "unexpected virtual key from sentinel vkey issue"

say "starting sentinel (egress on 127.0.0.1:$llm_port, threads $THREADS)"
SENTINEL_MASTER_KEY="$master_key" "$sentinel_bin" run --config "$tmp/sentinel.toml" \
    >"$tmp/sentinel.log" 2>&1 &
sentinel_pid=$!

# --- request bodies and wrk scripts -------------------------------------------------------------

# A chat request as an SDK sends it: a system prompt, the user's text (PROMPT_BYTES of prose),
# max_tokens 1024; the streamed one asks for usage itself.
for kind in json stream; do
    python3 - "$kind" "$PROMPT_BYTES" >"$tmp/body-$kind.json" <<'EOF'
import json, random, sys
kind, size = sys.argv[1], int(sys.argv[2])
words = ("the customer order was shipped to a warehouse in Rotterdam and invoice should include "
         "tax for each line item please summarize following report quarterly revenue grew by "
         "percent while operating costs remained flat compared with last year our team expects "
         "demand increase next quarter because of new contracts").split()
rng = random.Random(7)
text = []
n = 0
while n < size:
    w = rng.choice(words)
    text.append(w)
    n += len(w) + 1
body = {
    "model": "gpt-4o",
    "messages": [
        {"role": "system", "content": "You are a helpful assistant for an order desk. Answer briefly."},
        {"role": "user", "content": " ".join(text)},
    ],
    "temperature": 0.2,
    "max_tokens": 1024,
}
if kind == "stream":
    body["stream"] = True
    body["stream_options"] = {"include_usage": True}
json.dump(body, sys.stdout, separators=(",", ":"))
EOF
done

# wrk_script KIND KEY > file: POST the body with the key and the mock's knobs; print one RESULT
# line at the end (latencies in microseconds).
wrk_script() {
    cat <<EOF
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $2"
wrk.headers["x-mock-output-tokens"] = "$OUTPUT_TOKENS"
wrk.headers["x-mock-chunks"] = "$STREAM_CHUNKS"
wrk.headers["x-mock-chunk-delay-ms"] = "0"
local f = assert(io.open("$tmp/body-$1.json", "rb"))
wrk.body = f:read("*a")
f:close()

done = function(summary, latency, requests)
    local e = summary.errors
    io.write(string.format(
        "RESULT requests=%d duration_us=%d p50_us=%.0f p90_us=%.0f p99_us=%.0f max_us=%.0f status_errors=%d socket_errors=%d\n",
        summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
        latency:percentile(99), latency.max, e.status, e.connect + e.read + e.write + e.timeout))
end
EOF
}
for kind in json stream; do
    wrk_script "$kind" "$openai_key" >"$tmp/direct-$kind.lua"
    wrk_script "$kind" "$vkey" >"$tmp/sentinel-$kind.lua"
done

declare -A url=([direct]="$mock_url/v1/chat/completions"
    [sentinel]="http://127.0.0.1:$llm_port/v1/chat/completions")
targets=(direct sentinel)

# Both answer a real call before anything is measured: a JSON one with usage, a stream to [DONE].
check_target() { # target
    local key="$openai_key" out="$results/check-$1"
    [[ "$1" == sentinel ]] && key="$vkey"
    for kind in json stream; do
        local code
        code="$(curl -sS -N -o "$out-$kind" -w '%{http_code}' --max-time 10 "${url[$1]}" \
            -H 'Content-Type: application/json' -H "Authorization: Bearer $key" \
            -H "x-mock-output-tokens: $OUTPUT_TOKENS" -H "x-mock-chunks: $STREAM_CHUNKS" \
            -H 'x-mock-chunk-delay-ms: 0' --data-binary "@$tmp/body-$kind.json" 2>/dev/null)" || return 1
        [[ "$code" == 200 ]] || return 1
        if [[ "$kind" == json ]]; then
            grep -q '"completion_tokens"' "$out-$kind" || return 1
        else
            grep -q '^data: \[DONE\]' "$out-$kind" || return 1
            local events
            events="$(grep -c '^data: ' "$out-$kind")"
            # role, STREAM_CHUNKS contents, finish, usage, [DONE]
            [[ "$events" == $((STREAM_CHUNKS + 4)) ]] || {
                say "$1: a stream had $events events, expected $((STREAM_CHUNKS + 4))"
                return 1
            }
        fi
    done
}
ready=0
for _ in $(seq 100); do
    if check_target sentinel; then
        ready=1
        break
    fi
    kill -0 "$sentinel_pid" 2>/dev/null || { cat "$tmp/sentinel.log" >&2; die "sentinel exited"; }
    sleep 0.2
done
if ((!ready)); then
    tail -n 30 "$tmp/sentinel.log" >&2
    cat "$results/check-sentinel-"* >&2 2>/dev/null
    die "sentinel did not relay a chat completion within 20s"
fi
check_target direct || die "the mock did not answer a direct chat completion"

# --- runs ---------------------------------------------------------------------------------------

clk_tck="$(getconf CLK_TCK)"
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0; }
clear_mock() { curl -sS -o /dev/null -X POST --max-time 10 "$mock_url/_mock/clear" || true; }

# run_wrk TARGET KIND CLIENTS SECONDS OUTFILE; never fails (the status goes into OUTFILE.rc)
run_wrk() {
    local rc=0
    clear_mock # the mock keeps every request it saw: forget them between runs
    timeout --kill-after=10 $(($4 + 60)) \
        "$wrk_bin" -t "$WRK_THREADS" -c "$3" -d "${4}s" --timeout 30s \
        -s "$tmp/$1-$2.lua" "${url[$1]}" >"$5" 2>&1 || rc=$?
    echo "$rc" >"$5.rc"
}

if ((WARMUP > 0)); then
    say "warm-up: ${WARMUP}s per target and kind"
    maxc=0
    for c in $CLIENTS; do ((c > maxc)) && maxc=$c; done
    for kind in $KINDS; do
        for t in "${targets[@]}"; do run_wrk "$t" "$kind" "$maxc" "$WARMUP" "$results/warmup-$t-$kind.out"; done
    done
fi

declare -A rps p50 p99 errs status cpu
failed_any=0
notes=()
disturbed=()
for kind in $KINDS; do
    for c in $CLIENTS; do
        for t in "${targets[@]}"; do
            out="$results/$kind-$c-$t.out"
            k="$kind/$c/$t"
            say "$kind, $c clients, $t (${DURATION}s)"
            busy=0
            pgrep -x rustc >/dev/null 2>&1 && busy=1
            ticks0="$(cpu_ticks "$sentinel_pid")"
            run_wrk "$t" "$kind" "$c" "$DURATION" "$out"
            ticks1="$(cpu_ticks "$sentinel_pid")"
            pgrep -x rustc >/dev/null 2>&1 && busy=1
            ((busy)) && disturbed+=("$t $kind $c")
            rc="$(cat "$out.rc")"
            line="$(grep -m1 '^RESULT ' "$out" || true)"
            field() { sed -n "s/.* $1=\([0-9.]*\).*/\1/p" <<<"$line"; }
            requests="$(field requests)"
            duration_us="$(field duration_us)"
            p50[$k]="$(awk -v v="$(field p50_us)" 'BEGIN { if (v != "") printf "%.2f", v / 1000 }')"
            p99[$k]="$(awk -v v="$(field p99_us)" 'BEGIN { if (v != "") printf "%.2f", v / 1000 }')"
            rps[$k]="$(awk -v n="$requests" -v d="$duration_us" 'BEGIN { if (d > 0) printf "%.0f", n / (d / 1e6) }')"
            status_errors="$(field status_errors)"
            socket_errors="$(field socket_errors)"
            errs[$k]="${status_errors:-?}/${socket_errors:-?}"
            if [[ "$t" == sentinel && -n "$requests" && "$requests" -gt 0 ]]; then
                # Sentinel's CPU time (user + system) per request, in µs.
                cpu[$kind/$c]="$(awk -v a="$ticks0" -v b="$ticks1" -v n="$requests" -v hz="$clk_tck" \
                    'BEGIN { printf "%.0f", (b - a) / hz * 1e6 / n }')"
            fi
            if [[ "$rc" == 0 && -n "$line" && "$status_errors" == 0 && "$socket_errors" == 0 &&
                "${requests:-0}" -gt 0 ]]; then
                status[$k]=ok
            else
                status[$k]=error
                failed_any=1
                first="$(grep -m1 -iE 'error|non-2xx|unable' "$out" || tail -n1 "$out")"
                notes+=("**$t, $kind, $c clients: exit $rc, ${status_errors:-?} non-2xx answers, ${socket_errors:-?} socket errors**: $first")
            fi
        done
    done
done
load_after="$(cut -d' ' -f1-3 /proc/loadavg)"

# --- report -------------------------------------------------------------------------------------

ratio() { # a b -> a/b with two decimals, or n/a
    awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || b + 0 == 0) print "n/a"; else printf "%.2f", a / b }'
}
minus() { # a b -> a-b with two decimals, or n/a
    awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "") print "n/a"; else printf "%+.2f", a - b }'
}
okv() { # map key -> value when that run was ok
    local -n m="$1"
    if [[ "${status[$2]}" == ok ]]; then echo "${m[$2]}"; fi
}
cell() { # map key -> value or ERR
    local -n m="$1"
    if [[ "${status[$2]}" == ok ]]; then echo "${m[$2]}"; else echo "ERR"; fi
}

cpu_model="$(awk -F': *' '/^model name/{ print $2; exit }' /proc/cpuinfo)"
[[ -n "$cpu_model" ]] || cpu_model="$(lscpu 2>/dev/null | awk -F': *' '/Model name/{ print $2; exit }')"
# `wrk -v` prints its version and usage, and exits 1.
wrk_version="$("$wrk_bin" -v 2>&1 | head -n1 | awk '{ print $1, $2 }' || true)"

echo
echo "### LLM egress: chat completions direct to the mock provider vs through Sentinel"
echo
echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "- machine: $(nproc) CPUs, ${cpu_model:-unknown CPU}, $(uname -sr)"
echo "- load average (1/5/15 min): before $load_before, after $load_after"
echo "- versions: $("$sentinel_bin" --version) ($build_note), mock_llm from the same tree, $wrk_version"
echo "- setup: \`gpt-4o\` (o200k estimate), a $(wc -c <"$tmp/body-json.json")-byte request" \
    "(system prompt + ${PROMPT_BYTES} bytes of user text, max_tokens 1024), $OUTPUT_TOKENS output" \
    "tokens, streams of $STREAM_CHUNKS content chunks ($((STREAM_CHUNKS + 4)) events, usage asked by" \
    "the client), \`x-mock-chunk-delay-ms: 0\`; Sentinel threads $THREADS, in-memory ledger, log" \
    "level info; \`wrk -t $WRK_THREADS -c C -d $DURATION\` per cell (warm-up ${WARMUP}s per target" \
    "and kind); everything on loopback on this machine"
echo
echo "| request | clients | req/s direct | req/s sentinel | sentinel/direct | p50 direct (ms) | p50 sentinel (ms) | p99 direct (ms) | p99 sentinel (ms) | added p50 (ms) | added p99 (ms) | sentinel CPU/request (µs) | errors (d, s) |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
for kind in $KINDS; do
    for c in $CLIENTS; do
        d="$kind/$c/direct" s="$kind/$c/sentinel"
        label="non-stream"
        [[ "$kind" == stream ]] && label="stream"
        printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s, %s |\n' \
            "$label" "$c" "$(cell rps "$d")" "$(cell rps "$s")" \
            "$(ratio "$(okv rps "$s")" "$(okv rps "$d")")" \
            "$(cell p50 "$d")" "$(cell p50 "$s")" "$(cell p99 "$d")" "$(cell p99 "$s")" \
            "$(minus "$(okv p50 "$s")" "$(okv p50 "$d")")" \
            "$(minus "$(okv p99 "$s")" "$(okv p99 "$d")")" \
            "${cpu[$kind/$c]:-n/a}" "${errs[$d]}" "${errs[$s]}"
    done
done
echo
echo "Latency is wrk's, per request, to the last byte of the answer (a whole stream for streams);"
echo "added = Sentinel's percentile minus direct's (not a percentile of per-request differences)."
echo "Sentinel CPU/request: its user+system time during the run over the requests wrk completed."
echo "errors = non-2xx answers / socket errors (connect, read, write, timeout)."
echo "The load average after includes this benchmark's own processes."
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
    exit 1
fi
