"""Token ids from Hugging Face `tokenizers` (Python) for Qwen3's, Llama 3's and Gemma 3's tokenizer.json.

Writes tests/fixtures/tokenizers_reference.json: for each, the ids of mixed text (prose, code,
Unicode, runs of spaces and newlines, chat markers) without special tokens added, which
crates/models/tests/tokenizers_reference.rs compares with distill's tokenizers (from the same
tokenizer.json, and for Gemma 3 also the one rebuilt from the GGUF file's pieces and scores).

Run:  for t in qwen3 llama3 gemma3; do scripts/fetch-tokenizer.sh $t; done
      pip install tokenizers && python3 tests/reference/make_tokenizer_fixtures.py
"""

import json
import os
import sys
from pathlib import Path

from tokenizers import Tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_fixtures import mixed_text  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
HOME = Path(os.environ.get("DISTILL_HOME", Path.home() / ".cache" / "distill"))

MARKERS = {
    "qwen3": "<|im_start|>user\nWrite   a  haiku\tabout  autumn.<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n",
    "llama3": "<|start_header_id|>user<|end_header_id|>\n\nWrite   a  haiku\tabout  autumn.<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
    "gemma3": "<start_of_turn>user\nWrite   a  haiku\tabout  autumn.<end_of_turn>\n<start_of_turn>model\n",
}


def main():
    out = {}
    for name, markers in MARKERS.items():
        tok = Tokenizer.from_file(str(HOME / "tokenizers" / name / "tokenizer.json"))
        text = markers + mixed_text()[:4000] + "  Leaves   fall\n\n\n   slowly…  ```python\nprint('hi')\n```\n" + markers
        ids = tok.encode(text, add_special_tokens=False).ids
        out[name] = {"text": text, "ids": ids}
        print(name, len(ids), "ids")
    path = ROOT / "tests" / "fixtures" / "tokenizers_reference.json"
    path.write_text(json.dumps(out, ensure_ascii=False) + "\n")
    print("wrote", path)


if __name__ == "__main__":
    main()
