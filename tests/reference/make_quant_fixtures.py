"""Reference dequantisation of GGUF's quantised block types, by gguf-py (llama.cpp's Python
package, an implementation independent of ours in NumPy).

Writes tests/fixtures/quant_blocks.json: for each block type, random blocks (scales set to finite
f16 values of a weight's size) as hex, and the f32 values gguf-py dequantises them to.
Run: python3 -m pip install gguf && python3 tests/reference/make_quant_fixtures.py
"""

import json
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf.constants import GGML_QUANT_SIZES
from gguf.quants import dequantize

rng = np.random.default_rng(23)
BLOCKS = 3
# Byte offsets of the f16 scales in each block type (llama.cpp's block_q* structs).
SCALES = {
    T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2], T.Q8_0: [0],
    T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208],
}

out = {}
for qtype, offsets in SCALES.items():
    _, size = GGML_QUANT_SIZES[qtype]
    blocks = rng.integers(0, 256, (BLOCKS, size), dtype=np.uint8)
    for at in offsets:
        scale = (rng.uniform(0.5, 2.0, BLOCKS) * 2.0 ** -rng.integers(6, 11, BLOCKS)).astype(np.float16)
        blocks[:, at:at + 2] = scale.view(np.uint8).reshape(BLOCKS, 2)
    values = dequantize(blocks.reshape(-1), qtype).astype(np.float32).reshape(-1)
    out[qtype.name] = {"blocks": blocks.tobytes().hex(), "values": [float(v) for v in values]}

path = Path(__file__).resolve().parents[1] / "fixtures" / "quant_blocks.json"
path.write_text(json.dumps(out, indent=None) + "\n")
print(f"wrote {path} ({path.stat().st_size} bytes)")
