use super::*;
use crate::packed::{self, PackedWeight, Precision};
use std::sync::Arc;

/// An (M, K) input of mixed-sign values with a few larger ones, as activations have.
fn input(m: usize, k: usize) -> Vec<f32> {
    (0..m * k).map(|i| ((i * 37 % 29) as f32 - 14.0) * 0.13 + if i % 97 == 0 { 3.0 } else { 0.0 }).collect()
}

/// The product in f64 of `x` and the weights the kernel multiplies.
fn reference(x: &[f32], w: &[f32], (m, n, k): (usize, usize, usize)) -> Vec<f64> {
    (0..m * n).map(|i| (0..k).map(|j| x[i / n * k + j] as f64 * w[i % n * k + j] as f64).sum()).collect()
}

/// The matrix holds llama.cpp's dequantised values: the affine form of the file's own scales,
/// exact for the k-quants, Q4_1 and Q5_1, to f32 rounding for the others.
#[test]
fn every_block_type_keeps_llama_cpp_values() {
    for ty in BlockType::ALL {
        let (n, k) = (21, 2 * ty.values());
        let bytes = random_blocks(ty, n * k / ty.values(), 3);
        let matrix = QuantMatrix::from_blocks(ty, n, k, &bytes).unwrap();
        let mut want = vec![0f32; n * k];
        dequantize(ty, &bytes, &mut want);
        let got = matrix.dequantize();
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        let exact = matches!(ty, BlockType::Q4_1 | BlockType::Q5_1 | BlockType::Q4K | BlockType::Q5K);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            let tol = if exact { 0.0 } else { 8e-6 * scale };
            assert!((g - w).abs() <= tol, "{ty:?} [{i}]: {g} vs {w}");
        }
    }
}

/// Every block type through the kernel, for ragged rows (N not a multiple of the tile, M not of
/// the tile height), against the f64 product of what the kernel multiplies.
#[test]
fn the_kernel_computes_the_product_for_every_block_type() {
    if !available() {
        eprintln!("this CPU lacks AVX-512 VNNI: the quantised kernel is not exercised here");
        return;
    }
    for ty in BlockType::ALL {
        for (m, n) in [(1, 16), (7, 45), (13, 70)] {
            let k = 2 * ty.values();
            let bytes = random_blocks(ty, n * k / ty.values(), m as u64);
            let matrix = Arc::new(QuantMatrix::from_blocks(ty, n, k, &bytes).unwrap());
            let w = matrix.dequantize();
            let x = input(m, k);
            let packed = PackedWeight::quantized(matrix);
            assert_eq!(packed.precision(), Precision::Int8);
            let y = packed::product(&x, &packed);
            let want = reference(&x, &w, (m, n, k));
            let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
            for (i, (a, b)) in y.iter().zip(&want).enumerate() {
                // The inputs' rounding: at most 2⁻¹⁶ of each block's largest value.
                assert!((*a as f64 - b).abs() < 1e-4 * scale, "{ty:?} ({m}, {n}, {k}) y[{i}]: {a} vs {b}");
            }
        }
    }
}

/// A row's outputs are bit-for-bit the same alone, in a short batch and anywhere in a long one.
#[test]
fn a_row_gets_the_same_bits_in_any_batch() {
    if !available() {
        return;
    }
    let (m, n, k) = (150, 96, 256);
    for ty in [BlockType::Q4K, BlockType::Q6K, BlockType::Q5_0] {
        let bytes = random_blocks(ty, n * k / ty.values(), 11);
        let packed = PackedWeight::quantized(Arc::new(QuantMatrix::from_blocks(ty, n, k, &bytes).unwrap()));
        let x = input(m, k);
        let all = packed::product(&x, &packed);
        for (start, len) in [(0, 1), (7, 1), (70, 3), (140, 10), (149, 1)] {
            let part = packed::product(&x[start * k..(start + len) * k], &packed);
            assert!(part == all[start * n..(start + len) * n], "{ty:?} rows {start}..+{len} differ from the batch");
        }
    }
}

/// Rounding the inputs (two 8-bit integers per value) moves the product by less than 0.01% RMS: the error budget the teacher's log-probabilities are measured against.
#[test]
fn rounding_the_inputs_changes_the_product_little() {
    if !available() {
        return;
    }
    let (m, n, k, ty) = (5, 64, 512, BlockType::Q4K);
    let bytes = random_blocks(ty, n * k / ty.values(), 5);
    let matrix = Arc::new(QuantMatrix::from_blocks(ty, n, k, &bytes).unwrap());
    let w = matrix.dequantize();
    let x = input(m, k);
    let y = packed::product(&x, &PackedWeight::quantized(matrix));
    let exact = reference(&x, &w, (m, n, k));
    let rms = |v: &mut dyn Iterator<Item = f64>| {
        let (sum, count) = v.fold((0.0, 0), |(s, c), v| (s + v * v, c + 1));
        (sum / count as f64).sqrt()
    };
    let scale = rms(&mut exact.iter().copied());
    let error = rms(&mut y.iter().zip(&exact).map(|(a, b)| *a as f64 - b));
    assert!(error < 1e-4 * scale, "RMS error {error} against an RMS of {scale}");
}

#[test]
fn bad_blocks_are_errors_not_panics() {
    let ty = BlockType::Q4K;
    let bytes = random_blocks(ty, 4, 1);
    let short = QuantMatrix::from_blocks(ty, 2, 512, &bytes[..bytes.len() - 1]).unwrap_err();
    assert!(short.to_string().contains("do not hold 2 rows"), "{short}");
    let ragged = QuantMatrix::from_blocks(ty, 4, 100, &bytes).unwrap_err();
    assert!(ragged.to_string().contains("not whole Q4_K blocks"), "{ragged}");
    let mut nan = bytes.clone();
    nan[ty.bytes()..ty.bytes() + 2].copy_from_slice(&half::f16::NAN.to_le_bytes());
    let err = QuantMatrix::from_blocks(ty, 4, 256, &nan).unwrap_err();
    assert!(err.to_string().contains("row 1, block 0") && err.to_string().contains("not finite"), "{err}");
}
