"""Golden fixtures for the decoder families, from Hugging Face `transformers` (PyTorch, f32).

For each family a tiny random-weight model is written to tests/fixtures/families/<name>/ as
transformers saves it (config.json, model.safetensors), with <name>.expected.safetensors beside it holding:
  * ids_short (20 tokens) and ids_long (40 tokens), and the logits of each, (T, V);
  * grad.<parameter>: the gradient of the mean next-token cross-entropy on ids_short for
    every parameter, under the checkpoint's names (Phi-3's fused tensors as they are).
The configs exercise what sets each family apart: Llama 3's RoPE scaling; Qwen3's q/k norms
and a head_dim that is not hidden/heads; Phi-3's fused projections, longrope (the long ids go
past the original context) and a sliding window; Gemma 3's (1 + w) norms on random weights,
sandwich norms, GeGLU, embedding scale, query_pre_attn_scalar, and sliding layers with their
own RoPE base beside a global layer with linear scaling.

Run:  pip install torch transformers safetensors && python3 tests/reference/make_family_fixtures.py
(written with transformers 5.25.0, torch 2.15.0)
"""

import json
import shutil
from pathlib import Path

import torch
import transformers
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "fixtures" / "families"
VOCAB = 128


def configs():
    common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_attention_heads=4, rms_norm_eps=1e-6)
    return {
        "llama3": transformers.LlamaConfig(
            **common, num_hidden_layers=2, num_key_value_heads=2, max_position_embeddings=128,
            tie_word_embeddings=False,
            rope_parameters=dict(rope_type="llama3", rope_theta=500000.0, factor=8.0, low_freq_factor=1.0,
                                 high_freq_factor=4.0, original_max_position_embeddings=16),
        ),
        "qwen3": transformers.Qwen3Config(
            **common, num_hidden_layers=2, num_key_value_heads=2, head_dim=32, max_position_embeddings=128,
            tie_word_embeddings=True, rope_parameters=dict(rope_type="default", rope_theta=1000000.0),
        ),
        "phi3": transformers.Phi3Config(
            **common, num_hidden_layers=2, num_key_value_heads=2, max_position_embeddings=64,
            original_max_position_embeddings=32, sliding_window=24, tie_word_embeddings=False,
            rope_parameters=dict(
                rope_type="longrope", rope_theta=10000.0, original_max_position_embeddings=32,
                short_factor=[1.0 + 0.1 * i for i in range(8)], long_factor=[1.0 + 0.9 * i for i in range(8)],
            ),
            pad_token_id=0, bos_token_id=1, eos_token_id=2,
        ),
        "gemma3": transformers.Gemma3TextConfig(
            **common, num_hidden_layers=3, num_key_value_heads=1, head_dim=32, query_pre_attn_scalar=24,
            max_position_embeddings=64, sliding_window=8,
            layer_types=["sliding_attention", "sliding_attention", "full_attention"],
            rope_parameters={
                "sliding_attention": dict(rope_type="default", rope_theta=10000.0),
                "full_attention": dict(rope_type="linear", rope_theta=1000000.0, factor=8.0),
            },
            tie_word_embeddings=True, pad_token_id=0, bos_token_id=2, eos_token_id=1,
        ),
    }


MODELS = {
    "llama3": transformers.LlamaForCausalLM,
    "qwen3": transformers.Qwen3ForCausalLM,
    "phi3": transformers.Phi3ForCausalLM,
    "gemma3": transformers.Gemma3ForCausalLM,
}


def main():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    ids_short = torch.randint(0, VOCAB, (1, 20), generator=gen)
    ids_long = torch.randint(0, VOCAB, (1, 40), generator=gen)
    for name, cfg in configs().items():
        cfg.attn_implementation = "eager"
        model = MODELS[name](cfg).float().eval()
        with torch.no_grad():
            for pname, p in model.named_parameters():
                # Larger than the 0.02 init, so attention is far from uniform; norms random
                # (around 0 for Gemma's 1 + w, around 1 elsewhere).
                if pname.endswith("norm.weight"):
                    base = 0.0 if name == "gemma3" else 1.0
                    p.copy_(base + 0.3 * torch.randn(p.shape, generator=gen))
                else:
                    p.copy_(0.2 * torch.randn(p.shape, generator=gen))
        out = OUT / name
        shutil.rmtree(out, ignore_errors=True)
        model.save_pretrained(out, safe_serialization=True)
        tensors = {"ids_short": ids_short[0].to(torch.int64), "ids_long": ids_long[0].to(torch.int64)}
        with torch.no_grad():
            tensors["logits_long"] = model(ids_long).logits[0].contiguous()
        logits = model(ids_short).logits[0]
        tensors["logits_short"] = logits.detach().contiguous()
        loss = torch.nn.functional.cross_entropy(logits[:-1], ids_short[0, 1:])
        loss.backward()
        seen = set()
        for pname, p in model.named_parameters():
            if p.grad is not None and id(p) not in seen:
                seen.add(id(p))
                tensors["grad." + pname] = p.grad.detach().contiguous()
        tensors["loss"] = loss.detach().reshape(1)
        save_file(tensors, str(OUT / f"{name}.expected.safetensors"))
        (out / "generation_config.json").unlink(missing_ok=True)
        print(name, "loss", float(loss), "files", sorted(p.name for p in out.iterdir()))


if __name__ == "__main__":
    main()
