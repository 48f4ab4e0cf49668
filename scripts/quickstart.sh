#!/usr/bin/env bash
# The quickstart: fetch the default teacher (if missing), build distill, and run the whole
# distillation pipeline on it (examples/quickstart.toml): teacher signal → train → eval → export
# (GGUF q8_0, q4_0) → eval of the exported files → report. Ends with the report path and the
# retention figures. Re-running resumes; finished stages are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/fetch-teacher.sh
cargo build --release --locked -j "${CARGO_BUILD_JOBS:-2}" -p distill-cli
target/release/distill run examples/quickstart.toml
