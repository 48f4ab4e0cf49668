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

/// `x` (M, K) · Wᵀ through `kernel`'s tiles alone, one after another.
fn product_on(kernel: Kernel, x: &[f32], w: &QuantMatrix) -> Vec<f32> {
    let (n, k) = (w.rows(), w.cols());
    let (rows, m) = (Rows::quantize(x, k), x.len() / k);
    let mut y = vec![f32::NAN; m * n];
    let mut tile = [0f32; MAX_ROWS * NR];
    for panel in 0..n.div_ceil(NR) {
        for r0 in (0..m).step_by(MAX_ROWS) {
            let real = MAX_ROWS.min(m - r0);
            // SAFETY: `kernel` runs here; rows r0.. < M, a panel of the matrix, a tile of MAX_ROWS × NR.
            unsafe { run_tile(kernel, w, 2 * panel, &rows, r0, real, tile.as_mut_ptr(), NR) };
            for r in 0..real {
                for j in 0..NR.min(n - panel * NR) {
                    y[(r0 + r) * n + panel * NR + j] = tile[r * NR + j];
                }
            }
        }
    }
    y
}

/// Every block type through each kernel this CPU runs, for ragged rows (N not a multiple of the
/// tile, M not of the tile height), against the f64 product of what the kernel multiplies; and
/// through the packed product's tasks.
#[test]
fn the_kernels_compute_the_product_for_every_block_type() {
    if !available() {
        eprintln!("this CPU lacks AVX-512 VNNI and AVX2: the quantised kernels are not exercised here");
        return;
    }
    for ty in BlockType::ALL {
        for (m, n) in [(1, 16), (7, 45), (13, 70)] {
            let k = 2 * ty.values();
            let bytes = random_blocks(ty, n * k / ty.values(), m as u64);
            let matrix = Arc::new(QuantMatrix::from_blocks(ty, n, k, &bytes).unwrap());
            let w = matrix.dequantize();
            let x = input(m, k);
            let want = reference(&x, &w, (m, n, k));
            let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
            let packed = PackedWeight::quantized(matrix.clone());
            assert_eq!(packed.precision(), Precision::Int8);
            let mut runs = vec![("packed".to_string(), packed::product(&x, &packed))];
            runs.extend(
                Kernel::supported().into_iter().map(|kernel| (format!("{kernel:?}"), product_on(kernel, &x, &matrix))),
            );
            for (name, y) in runs {
                for (i, (a, b)) in y.iter().zip(&want).enumerate() {
                    // The inputs' rounding: at most 2⁻¹⁶ of each block's largest value.
                    assert!((*a as f64 - b).abs() < 1e-4 * scale, "{name} {ty:?} ({m}, {n}, {k}) y[{i}]: {a} vs {b}");
                }
            }
        }
    }
}

/// Where the CPU runs both kernels, they give the same bits (Q8_0 aside, whose offset the AVX2
/// kernel does not round through the inputs' sums: there within the inputs' rounding).
#[test]
fn the_kernels_agree_bit_for_bit() {
    let kernels = Kernel::supported();
    if kernels.len() < 2 {
        eprintln!("this CPU runs {kernels:?}: nothing to compare");
        return;
    }
    let (m, n) = (11, 64);
    for ty in BlockType::ALL {
        let k = 4 * ty.values();
        let matrix = QuantMatrix::from_blocks(ty, n, k, &random_blocks(ty, n * k / ty.values(), 7)).unwrap();
        let x = input(m, k);
        let (a, b) = (product_on(kernels[0], &x, &matrix), product_on(kernels[1], &x, &matrix));
        let scale = a.iter().fold(0f32, |m, v| m.max(v.abs()));
        for (i, (a, b)) in a.iter().zip(&b).enumerate() {
            match ty {
                BlockType::Q8_0 => assert!((a - b).abs() < 1e-5 * scale, "{ty:?} y[{i}]: {a} vs {b}"),
                _ => assert!(a.to_bits() == b.to_bits(), "{ty:?} y[{i}]: {a} vs {b}"),
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

/// The AVX-512 rounding of an input block gives the scalar loop's bits: mixed magnitudes, ties
/// of the rounding (values at halves of the scale), zeros and a block of zeros; a block holding
/// an infinity or a NaN is left to the scalar loop.
#[test]
fn inputs_round_alike_with_and_without_avx512() {
    if Kernel::detected() != Some(Kernel::Avx512) {
        eprintln!("this CPU lacks AVX-512: the vector rounding is not exercised here");
        return;
    }
    let mut blocks: Vec<[f32; CHUNK]> = (0..200u32)
        .map(|b| {
            std::array::from_fn(|i| {
                let v = ((b as usize * 131 + i * 37) % 61) as f32 - 30.0;
                v * 10f32.powi((b % 7) as i32 - 3) / (1.0 + (i % 5) as f32)
            })
        })
        .collect();
    // Exact halves of the scale (127 / amax = 1): ties, both ways.
    blocks.push(std::array::from_fn(|i| if i == 0 { 127.0 } else { i as f32 - 15.5 }));
    blocks.push([0.0; CHUNK]);
    blocks.push(std::array::from_fn(|i| if i % 2 == 0 { -0.0 } else { 1e-30 }));
    for (b, x) in blocks.iter().enumerate() {
        let (mut q, mut lo, mut q2, mut lo2) = ([0i8; CHUNK], [0i8; CHUNK], [0i8; CHUNK], [0i8; CHUNK]);
        let want = round_block(x, &mut q, &mut lo);
        // SAFETY: the CPU has AVX-512 (checked above).
        let got = unsafe { avx512::round_block(x, &mut q2, &mut lo2) };
        assert_eq!(got.map(f32::to_bits), Some(want.to_bits()), "block {b}: scale");
        assert_eq!((q, lo), (q2, lo2), "block {b}: rounded values");
    }
    for bad in [f32::INFINITY, f32::NAN] {
        let mut x = blocks[0];
        x[7] = bad;
        // SAFETY: as above.
        assert_eq!(unsafe { avx512::round_block(&x, &mut [0; CHUNK], &mut [0; CHUNK]) }, None, "{bad}");
    }
}
