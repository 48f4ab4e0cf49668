#!/usr/bin/env bash
# Builds the `distill` Python package's wheel (maturin, PyO3) from this tree and installs it with
# pip: `import distill` and the `distill` command. Arguments go to `maturin build` (the tests
# pass `--profile dev`; without one the wheel is an optimised release build, as `pip install .`
# makes). The wheel is left in target/wheels.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check "maturin>=1.5,<2" "numpy>=1.21"
rm -f target/wheels/distill-*.whl
python3 -m maturin build --locked --interpreter python3 --out target/wheels -j "${CARGO_BUILD_JOBS:-2}" "$@"
python3 -m pip install --quiet --disable-pip-version-check --force-reinstall --no-deps target/wheels/distill-*.whl
