#!/usr/bin/env bash
# The whole test suite, as README.md gives it and .ci/run calls it.
# Starts what the tests need (on 127.0.0.1 only), runs every test, stops it again.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo test --locked --all-features "$@"
