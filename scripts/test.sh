#!/usr/bin/env bash
# The whole test suite, as README.md gives it and .ci/run calls it.
# Starts what the tests need (on 127.0.0.1 only), runs every test, stops it again.
#
# Azurite (the Azure Storage emulator, pinned in tools/azurite/package-lock.json) backs the
# coordination tests. It is installed with `npm ci` when missing or when the lockfile changed,
# started on 127.0.0.1 with a port the kernel picks, and stopped by the EXIT trap whatever
# happens. Arguments are passed to `cargo test` (e.g. `./scripts/test.sh coordination`);
# `--exec CMD…` runs CMD with Azurite instead of the tests
# (e.g. `./scripts/test.sh --exec cargo bench --bench coordination`).
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests use: headless Chromium for the dashboard tests
# and shellcheck for the deployment scripts. Installed when missing, so that a clone plus this
# command is all the set-up there is (apt-get needs root, or sudo).
missing=()
[[ -x /usr/bin/chromium ]] || missing+=(chromium)
command -v shellcheck >/dev/null 2>&1 || missing+=(shellcheck)
if [[ ${#missing[@]} -gt 0 ]]; then
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "scripts/test.sh: the tests need ${missing[*]}; install them with your package manager" >&2
        exit 1
    fi
    sudo=()
    if [[ "$(id -u)" -ne 0 ]]; then
        sudo=(sudo)
    fi
    echo "scripts/test.sh: installing ${missing[*]} (apt-get)" >&2
    "${sudo[@]}" apt-get update -qq >&2
    "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

azurite_dir=tools/azurite
installed_lock="$azurite_dir/node_modules/.runbook-worker-installed-lock.json"

if ! command -v npm >/dev/null 2>&1; then
    echo "scripts/test.sh: npm is needed to install Azurite for the coordination tests (install Node.js 22 or later)" >&2
    exit 1
fi

# `npm ci` wipes and reinstalls node_modules, so it only runs when the installed tree does not
# match the committed lockfile.
if [[ ! -x "$azurite_dir/node_modules/.bin/azurite-blob" ]] ||
    ! cmp -s "$azurite_dir/package-lock.json" "$installed_lock"; then
    echo "scripts/test.sh: installing Azurite (npm ci --prefix $azurite_dir)" >&2
    npm ci --prefix "$azurite_dir" --no-audit --no-fund --loglevel=error >&2
    cp "$azurite_dir/package-lock.json" "$installed_lock"
fi

azurite_log=$(mktemp "${TMPDIR:-/tmp}/azurite.XXXXXX.log")
azurite_pid=""

stop_azurite() {
    if [[ -n "$azurite_pid" ]] && kill -0 "$azurite_pid" 2>/dev/null; then
        kill -TERM "$azurite_pid" 2>/dev/null || true
        wait "$azurite_pid" 2>/dev/null || true
    fi
    rm -f "$azurite_log"
}
trap stop_azurite EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --disableTelemetry is mandatory: without it Azurite reaches for an outside Application
# Insights host and hangs on stop. Port 0 lets the kernel pick a free port; Azurite prints it.
"$azurite_dir/node_modules/.bin/azurite-blob" \
    --blobHost 127.0.0.1 --blobPort 0 \
    --inMemoryPersistence --extentMemoryLimit 256 \
    --silent --disableTelemetry >"$azurite_log" 2>&1 &
azurite_pid=$!

port=""
for _ in $(seq 1 150); do
    if ! kill -0 "$azurite_pid" 2>/dev/null; then
        echo "scripts/test.sh: Azurite exited before it was ready; its output:" >&2
        cat "$azurite_log" >&2
        exit 1
    fi
    if grep -q "successfully listens" "$azurite_log"; then
        port=$(sed -n 's/.*successfully listens on http:\/\/127\.0\.0\.1:\([0-9][0-9]*\).*/\1/p' "$azurite_log" | head -n 1)
        break
    fi
    sleep 0.1
done
if [[ -z "$port" ]]; then
    echo "scripts/test.sh: Azurite did not report a listening port within 15 s; its output:" >&2
    cat "$azurite_log" >&2
    exit 1
fi

export AZURITE_BLOB_ENDPOINT="http://127.0.0.1:$port/devstoreaccount1"
echo "scripts/test.sh: Azurite blob service at $AZURITE_BLOB_ENDPOINT (pid $azurite_pid)" >&2

# Not `exec`: the EXIT trap must still run to stop Azurite.
if [[ "${1:-}" == "--exec" ]]; then
    shift
    "$@"
else
    cargo test --locked --all-features "$@"
fi
