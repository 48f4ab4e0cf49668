#!/usr/bin/env bash
# Everything the tests need, then the tests: fetch the default teacher, build, run the suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/fetch-teacher.sh
cargo test --workspace --locked -j "${CARGO_BUILD_JOBS:-2}"
