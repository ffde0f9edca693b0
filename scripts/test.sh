#!/usr/bin/env bash
# The test command (README "Quick start"): sets up what the tests need, then runs
# the whole suite with cargo-nextest. Extra arguments go to nextest, e.g.
#   scripts/test.sh -E 'test(config_)'
set -euo pipefail
cd "$(dirname "$0")/.."

if ! cargo nextest --version >/dev/null 2>&1; then
    echo "cargo-nextest not found; installing it (cargo install --locked cargo-nextest)" >&2
    cargo install --locked cargo-nextest
fi

# Under CI every test must run: a test whose prerequisite is missing fails.
export AUDIENCE_TEST_STRICT="${CI:-}"

# The object-storage emulators (S3: moto, Azure Blob: Azurite) run for the
# length of the suite; scripts/emulators.sh installs them on first use. The
# suite is built with the distributed mode, whose tests start Ballista
# clusters themselves (in process, and scheduler/executor processes on loopback).
exec ./scripts/emulators.sh cargo nextest run --features distributed --no-fail-fast "$@"
