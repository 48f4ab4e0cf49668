//! GGUF block dequantisation against gguf-py (llama.cpp's NumPy implementation), from
//! `tests/reference/make_quant_fixtures.py` in `tests/fixtures/quant_blocks.json`.

use distill_kernels::quant::{dequantize, BlockType, QuantMatrix};

fn fixture() -> serde_json::Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/quant_blocks.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("the fixture is in the repository")).unwrap()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

#[test]
fn every_block_type_dequantises_as_gguf_py_does() {
    let fixture = fixture();
    for ty in BlockType::ALL {
        let case = &fixture[ty.name()];
        let blocks = unhex(case["blocks"].as_str().unwrap());
        let want: Vec<f32> = case["values"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
        let mut got = vec![f32::NAN; want.len()];
        dequantize(ty, &blocks, &mut got);
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            // gguf-py computes in float32 too, in places in another order: a few ulps of the block's scale.
            assert!((g - w).abs() <= 1e-6 * scale, "{} value {i}: {g}, gguf-py {w}", ty.name());
        }
        // The kernel's matrix (one row of all the blocks) holds the same weights.
        let k = want.len();
        let matrix = QuantMatrix::from_blocks(ty, 1, k, &blocks).unwrap();
        let held = matrix.dequantize();
        for (i, (h, w)) in held.iter().zip(&want).enumerate() {
            assert!((h - w).abs() <= 1e-6 * scale, "{} value {i}: the matrix holds {h}, gguf-py {w}", ty.name());
        }
    }
}
