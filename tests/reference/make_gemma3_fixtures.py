"""Reference outputs of llama.cpp (through llama-cpp-python) for Gemma-3-270M (Q4_K_M GGUF).

Writes tests/fixtures/gemma3_reference.json, which crates/models/tests/gemma3_reference.rs
compares against:
  * the token ids of mixed text (prose, code, Unicode, runs of spaces and newlines, Gemma's
    turn markers), with BOS, special tokens parsed;
  * all-position logits for a short prompt: the top 20 per position and 64 fixed columns;
  * 24 greedy tokens continuing a prompt;
  * the same all-position logits and greedy tokens from `transformers` (PyTorch, f32) over the
    weights as it dequantises them from the same GGUF: an independent implementation of Gemma 3,
    against which the f32 path is held tightly (llama.cpp quantises activations on the fly).

Run:  scripts/fetch-teacher.sh gemma3-270m
      pip install llama-cpp-python==0.3.36 torch transformers accelerate gguf && python3 tests/reference/make_gemma3_fixtures.py [GGUF]
"""

import json
import os
import sys
from pathlib import Path

import numpy as np
from llama_cpp import Llama

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_fixtures import mixed_text  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
HOME = Path(os.environ.get("DISTILL_HOME", Path.home() / ".cache" / "distill"))
DEFAULT_GGUF = HOME / "models" / "gemma3" / "gemma-3-270m-q4_k_m.gguf"


def r4(x):
    return round(float(x), 4)


def main():
    gguf = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_GGUF
    llm = Llama(model_path=str(gguf), n_ctx=1024, logits_all=True, n_threads=2, seed=0, verbose=False)
    gemma_bits = (
        "<start_of_turn>user\nWrite   a  haiku\tabout  autumn.<end_of_turn>\n<start_of_turn>model\n"
        "  Leaves   fall\n\n\n   slowly…  <b>bold</b> ```python\nprint('hi')\n```\n"
    )
    text = gemma_bits + mixed_text()[:3000] + gemma_bits
    token_ids = llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)

    prompt = (
        "The three primary colours are red, yellow and blue. Mixing two of them gives a secondary colour: "
        "red and yellow make orange, yellow and blue make green, and blue and red make"
    )
    ids = llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)
    llm.reset()
    llm.eval(ids)
    scores = np.array(llm.scores[: len(ids)], dtype=np.float32)
    columns = list(range(0, scores.shape[1], scores.shape[1] // 64))[:64]
    positions = []
    for t in range(len(ids)):
        top = np.argsort(-scores[t])[:20]
        positions.append({
            "top_ids": [int(i) for i in top],
            "top_logits": [r4(scores[t, i]) for i in top],
            "column_logits": [r4(scores[t, c]) for c in columns],
        })

    greedy_prompt = "Once upon a time, in a small village by the sea,"
    prompt_ids = llm.tokenize(greedy_prompt.encode("utf-8"), add_bos=True, special=True)
    llm.reset()
    llm.eval(prompt_ids)
    generated = []
    for _ in range(24):
        nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        generated.append(nxt)
        llm.eval([nxt])
    greedy_text = llm.detokenize(generated).decode("utf-8", errors="replace")

    import torch
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32).eval()
    with torch.no_grad():
        hf_scores = hf(torch.tensor([ids])).logits[0].numpy()
        hf_greedy = hf.generate(torch.tensor([prompt_ids]), max_new_tokens=24, do_sample=False)[0, len(prompt_ids):]
    hf_positions = [{
        "column_logits": [r4(hf_scores[t, c]) for c in columns],
        "top_ids": [int(i) for i in np.argsort(-hf_scores[t])[:20]],
        "top_logits": [r4(hf_scores[t, i]) for i in np.argsort(-hf_scores[t])[:20]],
    } for t in range(len(ids))]

    fixture = {
        "model": gguf.name,
        "tokenizer": {"text": text, "ids": token_ids},
        "logits": {"prompt": prompt, "ids": ids, "columns": columns, "positions": positions},
        "greedy": {"prompt": greedy_prompt, "prompt_ids": prompt_ids, "ids": generated, "text": greedy_text},
        "transformers": {
            "source": f"transformers {__import__('transformers').__version__}, f32, weights dequantised from the GGUF",
            "positions": hf_positions,
            "greedy_ids": [int(i) for i in hf_greedy],
        },
    }
    out = ROOT / "tests" / "fixtures" / "gemma3_reference.json"
    out.write_text(json.dumps(fixture, ensure_ascii=False) + "\n")
    print(f"wrote {out}: {len(token_ids)} tokenizer ids, {len(ids)} logit positions, greedy: {greedy_text!r}")


if __name__ == "__main__":
    main()
