#!/usr/bin/env bash
# Installs everything Sentinel's build, tests and demo need that is missing on a Debian 12 machine:
#   - apt: cmake, clang, libclang-dev, pkg-config (pingora's libz-ng-sys and pg_query's bindgen),
#     postgresql, postgresql-contrib, postgresql-client (Postgres 15 for the tests, psql, pgbench),
#     pgbouncer (the comparison in benches/), python3-venv if `python3 -m venv` cannot work;
#   - a Python virtualenv at .venv with psycopg, asyncpg, pytest, openai, anthropic (the real
#     clients the black-box tests drive), prometheus-client (reads /metrics in tests) and
#     kubernetes-validate (scripts/check-manifests.sh);
#   - kubectl, when none is on PATH (Debian has no package): a pinned release from dl.k8s.io,
#     checked against its published sha256, into ~/.cache/sentinel/ (scripts/check-manifests.sh).
# Idempotent: it installs only what is missing, so a second run does nothing but check.
# Runs as root, or as another user with sudo for the apt part. Needs only python3 (and a Rust
# toolchain for the build itself, see rust-version in Cargo.toml).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$repo/.venv"

say() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] error: %s\n' "$*" >&2; exit 1; }

# Runs a command with its output hidden unless it fails.
quiet() {
    local log
    log="$(mktemp)"
    if ! "$@" >"$log" 2>&1; then
        cat "$log" >&2
        rm -f "$log"
        die "failed: $*"
    fi
    rm -f "$log"
}

if [[ "$(id -u)" -eq 0 ]]; then
    as_root=()
elif command -v sudo >/dev/null 2>&1; then
    as_root=(sudo)
else
    as_root=()
fi

installed() { dpkg -s "$1" 2>/dev/null | grep -q '^Status: install ok installed'; }

# --- apt packages -------------------------------------------------------------------------------
wanted=(cmake clang libclang-dev pkg-config postgresql postgresql-contrib postgresql-client pgbouncer)
missing=()
for pkg in "${wanted[@]}"; do
    installed "$pkg" || missing+=("$pkg")
done
if ! command -v python3 >/dev/null 2>&1; then
    missing+=(python3 python3-venv)
elif [[ ! -x "$venv/bin/python" ]] && ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    # Debian splits ensurepip out of python3; `python3 -m venv` fails without it.
    installed python3-venv || missing+=(python3-venv)
fi

if ((${#missing[@]})); then
    if [[ "$(id -u)" -ne 0 && ${#as_root[@]} -eq 0 ]]; then
        die "missing packages (${missing[*]}) and neither root nor sudo: install them and rerun"
    fi
    say "apt-get update"
    quiet "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -q update
    say "apt-get install ${missing[*]}"
    quiet "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -q install -y \
        -o DPkg::Lock::Timeout=300 --no-install-recommends "${missing[@]}"
    # The postgresql and pgbouncer packages may start their default services (a cluster on 5432,
    # PgBouncer on 6432, Sentinel's default port). Tests and the demo run their own throwaway
    # servers, so stop what the packages just started and keep it from starting at boot.
    if [[ " ${missing[*]} " == *" postgresql "* ]]; then
        if command -v pg_lsclusters >/dev/null 2>&1 && pg_lsclusters 15 main >/dev/null 2>&1; then
            say "stopping Debian's default cluster 15/main"
            "${as_root[@]}" pg_ctlcluster 15 main stop >/dev/null 2>&1 || true
        fi
        if [[ -d /run/systemd/system ]]; then
            "${as_root[@]}" systemctl disable --now postgresql >/dev/null 2>&1 || true
        fi
    fi
    if [[ " ${missing[*]} " == *" pgbouncer "* ]]; then
        say "stopping the default pgbouncer service (it listens on 6432)"
        if [[ -d /run/systemd/system ]]; then
            "${as_root[@]}" systemctl disable --now pgbouncer >/dev/null 2>&1 || true
        else
            "${as_root[@]}" service pgbouncer stop >/dev/null 2>&1 || true
        fi
    fi
else
    say "apt packages: all present"
fi

[[ -x /usr/lib/postgresql/15/bin/initdb ]] || die "Postgres 15 not found in /usr/lib/postgresql/15/bin"

# --- Python virtualenv --------------------------------------------------------------------------
py_packages=('psycopg[binary]' asyncpg pytest openai anthropic prometheus-client kubernetes-validate)
py_check='import psycopg, asyncpg, pytest, openai, anthropic, prometheus_client, kubernetes_validate'
if [[ -x "$venv/bin/python" ]] && "$venv/bin/python" -c "$py_check" >/dev/null 2>&1; then
    say "python venv: $venv ready"
else
    if ! [[ -x "$venv/bin/python" ]] || ! "$venv/bin/python" -c 'import sys' >/dev/null 2>&1; then
        say "creating python venv at $venv"
        quiet python3 -m venv --clear "$venv"
    fi
    say "pip install ${py_packages[*]}"
    quiet "$venv/bin/python" -m pip install -q --disable-pip-version-check "${py_packages[@]}"
    "$venv/bin/python" -c "$py_check" || die "the venv still lacks a package: $py_check"
fi

# --- kubectl (scripts/check-manifests.sh renders deploy/kubernetes with `kubectl kustomize`) ------
# Debian has no kubectl package. Without one on PATH, a pinned release goes into the cache dir
# below (outside the repo; check-manifests.sh looks there too), checked against its pinned
# sha256: the one published at https://dl.k8s.io/release/<version>/bin/linux/<arch>/kubectl.sha256.
kubectl_version=v1.32.4
kubectl_dir="${XDG_CACHE_HOME:-$HOME/.cache}/sentinel/kubectl-$kubectl_version"
if command -v kubectl >/dev/null 2>&1; then
    say "kubectl: $(command -v kubectl)"
elif [[ -x "$kubectl_dir/kubectl" ]]; then
    say "kubectl: $kubectl_dir/kubectl"
else
    case "$(uname -m)" in
        x86_64) kubectl_arch=amd64 kubectl_sha256=10d739e9af8a59c9e7a730a2445916e04bc9cbb44bc79d22ce460cd329fa076c ;;
        aarch64) kubectl_arch=arm64 kubectl_sha256=c6f96d0468d6976224f5f0d81b65e1a63b47195022646be83e49d38389d572c2 ;;
        *) die "no kubectl on PATH and none pinned here for $(uname -m): install one" ;;
    esac
    say "downloading kubectl $kubectl_version ($kubectl_arch) into $kubectl_dir"
    mkdir -p "$kubectl_dir"
    kubectl_tmp="$(mktemp "$kubectl_dir/.kubectl.XXXXXX")"
    # Exit 3: the file arrived and is not the published one; anything else: no download.
    kubectl_rc=0
    python3 - "https://dl.k8s.io/release/$kubectl_version/bin/linux/$kubectl_arch/kubectl" \
        "$kubectl_tmp" "$kubectl_sha256" <<'PY' || kubectl_rc=$?
import hashlib, sys, urllib.request
url, path, want = sys.argv[1:]
digest = hashlib.sha256()
try:
    with urllib.request.urlopen(url, timeout=60) as response, open(path, "wb") as out:
        for chunk in iter(lambda: response.read(1 << 20), b""):
            digest.update(chunk)
            out.write(chunk)
except OSError as e:
    sys.exit(f"{url}: {e}")
if digest.hexdigest() != want:
    print(f"{url}: sha256 {digest.hexdigest()}, published {want}", file=sys.stderr)
    sys.exit(3)
PY
    if [[ $kubectl_rc -eq 0 ]]; then
        chmod 0755 "$kubectl_tmp"
        mv -f "$kubectl_tmp" "$kubectl_dir/kubectl"
        say "kubectl: $kubectl_dir/kubectl"
    else
        rm -f "$kubectl_tmp"
        [[ $kubectl_rc -ne 3 ]] || die "the kubectl download does not match its published sha256: not installed"
        # Not fatal: only scripts/check-manifests.sh needs it, and it says so when it runs.
        say "warning: could not download kubectl (above); scripts/check-manifests.sh will fail without it"
    fi
fi

# --- Rust toolchain (not installed here: only checked) ------------------------------------------
if ! command -v cargo >/dev/null 2>&1 && [[ -x "$HOME/.cargo/bin/cargo" ]]; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi
if command -v cargo >/dev/null 2>&1; then
    say "rust: $(cargo --version)"
else
    say "warning: no cargo on PATH; building Sentinel needs a Rust toolchain (see rust-version in Cargo.toml)"
fi
say "done"
