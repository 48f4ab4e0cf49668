"""A plain Llama-family decoder in PyTorch that loads and saves distill's HF directories (a
training run's ``final/``, ``distill export DIR``, ``distill train --export-reference``): RMSNorm,
rotate-half RoPE at per-token positions, grouped-query attention kept inside each packed segment,
SwiGLU, tied or untied output head, q/k/v biases (Qwen2). Enough to train a distill student
under torch.distributed on the batches distill packs; for other families use transformers.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from typing import Dict, Optional

import torch
import torch.nn.functional as F

SUPPORTED = ("llama", "mistral", "qwen2")


class Llama(torch.nn.Module):
    """The decoder; :meth:`from_pretrained` loads one, :meth:`save_pretrained` writes it back."""

    def __init__(self, config: Dict, weights: Dict[str, torch.Tensor]) -> None:
        super().__init__()
        model_type = config.get("model_type", "llama")
        if model_type not in SUPPORTED:
            raise ValueError(f"distill.torch.Llama runs {', '.join(SUPPORTED)} models, not {model_type!r}: use transformers")
        if config.get("rope_scaling"):
            raise ValueError("RoPE scaling is not implemented here: use transformers")
        self.config = config
        self.heads = config["num_attention_heads"]
        self.kv_heads = config.get("num_key_value_heads") or self.heads
        self.head_dim = config.get("head_dim") or config["hidden_size"] // self.heads
        self.eps = config["rms_norm_eps"]
        half = self.head_dim // 2
        inv_freq = 1.0 / (config.get("rope_theta", 10000.0) ** (torch.arange(0, half, dtype=torch.float64) / half))
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        # Parameters by their HF names ('.' is not allowed in a module's parameter names).
        self.weights = torch.nn.ParameterDict({n.replace(".", "/"): torch.nn.Parameter(t.float().clone()) for n, t in weights.items()})

    @classmethod
    def from_pretrained(cls, directory: str) -> "Llama":
        from safetensors.torch import load_file

        with open(os.path.join(directory, "config.json")) as f:
            config = json.load(f)
        model = cls(config, load_file(os.path.join(directory, "model.safetensors")))
        model.source = directory
        return model

    def save_pretrained(self, directory: str) -> None:
        """Writes the weights (f32) with the source directory's config and tokenizer files, so
        distill (``distill export``, ``distill eval``) and transformers load the result."""
        from safetensors.torch import save_file

        os.makedirs(directory, exist_ok=True)
        for name in os.listdir(self.source):
            if name != "model.safetensors" and os.path.isfile(os.path.join(self.source, name)):
                shutil.copy(os.path.join(self.source, name), os.path.join(directory, name))
        tensors = {n.replace("/", "."): p.detach().contiguous().cpu() for n, p in self.weights.items()}
        save_file(tensors, os.path.join(directory, "model.safetensors"))

    def w(self, name: str) -> torch.Tensor:
        return self.weights[name.replace(".", "/")]

    def has(self, name: str) -> bool:
        return name.replace(".", "/") in self.weights

    def head(self) -> torch.Tensor:
        return self.w("lm_head.weight") if self.has("lm_head.weight") else self.w("model.embed_tokens.weight")

    def _rms(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.w(name)

    @staticmethod
    def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        x1, x2 = x[..., :half], x[..., half:]
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)

    def hidden(self, input_ids: torch.Tensor, position_ids: torch.Tensor, segment_ids: torch.Tensor) -> torch.Tensor:
        """Final hidden states (B, L, H) of packed rows: attention is causal and stays within a
        segment (``segment_ids``, 0 for padding), positions count from 0 in each sequence."""
        b, t = input_ids.shape
        angles = position_ids.double()[..., None] * self.inv_freq
        cos, sin = angles.cos().float()[:, None], angles.sin().float()[:, None]
        causal = torch.tril(torch.ones(t, t, dtype=torch.bool, device=input_ids.device))
        allowed = causal[None] & (segment_ids[:, :, None] == segment_ids[:, None, :])
        mask = torch.where(allowed, 0.0, float("-inf"))[:, None]
        x = self.w("model.embed_tokens.weight")[input_ids]
        for i in range(self.config["num_hidden_layers"]):
            p = f"model.layers.{i}."
            h = self._rms(x, p + "input_layernorm.weight")

            def proj(name: str) -> torch.Tensor:
                out = h @ self.w(p + f"self_attn.{name}.weight").T
                bias = p + f"self_attn.{name}.bias"
                return out + self.w(bias) if self.has(bias) else out

            q = proj("q_proj").view(b, t, self.heads, self.head_dim).transpose(1, 2)
            k = proj("k_proj").view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
            v = proj("v_proj").view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
            q, k = self._rope(q, cos, sin), self._rope(k, cos, sin)
            rep = self.heads // self.kv_heads
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
            scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim) + mask
            att = (torch.softmax(scores, dim=-1) @ v).transpose(1, 2).reshape(b, t, self.heads * self.head_dim)
            x = x + att @ self.w(p + "self_attn.o_proj.weight").T
            h = self._rms(x, p + "post_attention_layernorm.weight")
            gate = F.silu(h @ self.w(p + "mlp.gate_proj.weight").T)
            x = x + (gate * (h @ self.w(p + "mlp.up_proj.weight").T)) @ self.w(p + "mlp.down_proj.weight").T
        return self._rms(x, "model.norm.weight")

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        segment_ids: torch.Tensor,
        select: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Logits (B, L, V); with ``select`` (a (B, L) mask, e.g. ``loss_mask > 0``) only at the
        selected positions, (N, V), so no (B, L, V) tensor is made. Call it through the module
        (``model(...)``), so a DDP or FSDP wrapper sees the forward pass."""
        hidden = self.hidden(input_ids, position_ids, segment_ids)
        if select is not None:
            hidden = hidden.reshape(-1, hidden.shape[-1])[select.reshape(-1)]
        return hidden @ self.head().T
