#!/usr/bin/env bash
# Everything CI checks, in order: setup, format, Kubernetes manifests, lints, build, Rust tests
# (unit and black-box), then the Python client tests if there are any. Every step runs even if an
# earlier one failed, so one run reports all problems; the exit status is non-zero if any step
# failed.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
if ! command -v cargo >/dev/null 2>&1 && [[ -x "$HOME/.cargo/bin/cargo" ]]; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi

failed=()
step() {
    local name="$1"
    shift
    printf '\n==> %s\n' "$name"
    local start=$SECONDS
    if "$@"; then
        printf '==> %s: ok (%ss)\n' "$name" "$((SECONDS - start))"
    else
        printf '==> %s: FAILED (%ss)\n' "$name" "$((SECONDS - start))"
        failed+=("$name")
    fi
}

python_tests() {
    local dir=tests/python
    if [[ ! -d "$dir" ]]; then
        echo "no $dir directory: skipped"
        return 0
    fi
    local files
    files="$(find "$dir" -name 'test_*.py' -o -name '*_test.py' | wc -l)"
    local rc=0
    .venv/bin/pytest -q "$dir" || rc=$?
    # pytest exits 5 when it collected no tests: fine for an empty directory, a failure when
    # there are test files (they must have failed to collect).
    if [[ $rc -eq 5 && $files -eq 0 ]]; then
        echo "no Python tests in $dir yet"
        return 0
    fi
    return "$rc"
}

# A one-off build gains nothing from incremental state but gigabytes of disk.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

# Setup installs the toolchain pieces everything else needs: stop right away if it fails.
printf '==> setup\n'
scripts/setup.sh

step "cargo fmt" cargo fmt --all --check
step "manifests" scripts/check-manifests.sh
step "cargo clippy" cargo clippy --workspace --all-targets -- -D warnings
# The black-box tests run target/<profile>/sentinel as a child process: build it first.
step "cargo build" cargo build -p sentinel
step "cargo test" cargo test --workspace --no-fail-fast
step "python tests" python_tests

echo
if ((${#failed[@]})); then
    echo "FAILED: ${failed[*]}"
    exit 1
fi
echo "all steps passed"
