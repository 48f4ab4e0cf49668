//! f32 register-tile products on AVX-512F: up to 8 rows × up to 64 columns of the output held in
//! 16-lane registers over the whole inner dimension, each step broadcasting one value per row of
//! `a` against a row of `b`. Both operands are read where they lie (any row strides), so the
//! packed weights' panels and attention's keys and values use the same kernel.
//!
//! Every output is one sum over the inner dimension in index order, whatever tile it falls in:
//! a row gets the same bits computed alone or beside others.

/// Columns per register.
pub const LANES: usize = 16;

/// Whether this CPU runs the kernel: it has AVX-512F (the attention softmax asks the same).
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `dst` (m, n) = `a` (m, k) · `b` (k, n), row-major with row strides `a_rs`, `b_rs`, `dst_rs`.
/// `n` must be a multiple of [`LANES`].
///
/// Panics when the CPU lacks AVX-512F (check [`available`]) or an operand is out of bounds.
#[allow(clippy::too_many_arguments)]
pub fn product(
    a: &[f32],
    a_rs: usize,
    b: &[f32],
    b_rs: usize,
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    dst_rs: usize,
) {
    assert!(available(), "the register-tile product needs AVX-512F; check tile::available() first");
    assert!(n.is_multiple_of(LANES), "tile::product: {n} columns are not a multiple of {LANES}");
    if m == 0 || n == 0 {
        return;
    }
    let fits = |len: usize, rows: usize, rs: usize, cols: usize| rs >= cols && (rows - 1) * rs + cols <= len;
    assert!(
        fits(dst.len(), m, dst_rs, n) && (k == 0 || (fits(a.len(), m, a_rs, k) && fits(b.len(), k, b_rs, n))),
        "tile::product: operands out of bounds"
    );
    let mut c0 = 0;
    while c0 < n {
        let regs = ((n - c0) / LANES).min(4);
        let height = max_rows(regs);
        for r0 in (0..m).step_by(height) {
            let rows = height.min(m - r0);
            // Addresses only: the kernel reads and writes inside the slices.
            let tile = Tile {
                a: a.as_ptr().wrapping_add(r0 * a_rs),
                a_rs,
                b: b.as_ptr().wrapping_add(c0),
                b_rs,
                k,
                dst: dst.as_mut_ptr().wrapping_add(r0 * dst_rs + c0),
                dst_rs,
            };
            // SAFETY: AVX-512F is present (asserted); the tile's rows of `a` (k values each),
            // the k rows of `b` (regs · LANES values from column c0) and `dst`'s rectangle lie
            // inside the slices, as asserted above.
            unsafe { run((rows, regs), tile) };
        }
        c0 += regs * LANES;
    }
}

/// Rows of a tile `regs` registers wide: 24 accumulators at most, leaving registers for the
/// row of `b` and the broadcast.
pub const fn max_rows(regs: usize) -> usize {
    if regs >= 4 {
        6
    } else {
        8
    }
}

/// One tile's operands: `a` (rows, k) and `b` (k, columns) read, `dst` (rows, columns) written,
/// each row `*_rs` values after the previous one.
#[derive(Clone, Copy)]
pub(crate) struct Tile {
    pub a: *const f32,
    pub a_rs: usize,
    pub b: *const f32,
    pub b_rs: usize,
    pub k: usize,
    pub dst: *mut f32,
    pub dst_rs: usize,
}

/// One tile of `rows` × `regs`·[`LANES`] through the kernel of that size.
///
/// # Safety
/// As [`kernel`]; `rows` ≤ [`max_rows`]`(regs)`, `regs` in 1..=4.
pub(crate) unsafe fn run((rows, regs): (usize, usize), tile: Tile) {
    macro_rules! sizes {
        ($(($r:literal, $v:literal)),*) => {
            match (rows, regs) {
                // SAFETY: the caller's.
                $(($r, $v) => unsafe { kernel::<$r, $v>(tile) },)*
                _ => unreachable!("no {rows} × {regs} register tile"),
            }
        };
    }
    sizes!(
        (1, 1),
        (2, 1),
        (3, 1),
        (4, 1),
        (5, 1),
        (6, 1),
        (7, 1),
        (8, 1),
        (1, 2),
        (2, 2),
        (3, 2),
        (4, 2),
        (5, 2),
        (6, 2),
        (7, 2),
        (8, 2),
        (1, 3),
        (2, 3),
        (3, 3),
        (4, 3),
        (5, 3),
        (6, 3),
        (7, 3),
        (8, 3),
        (1, 4),
        (2, 4),
        (3, 4),
        (4, 4),
        (5, 4),
        (6, 4)
    )
}

/// `dst` (R, V·16) = `a` (R, k) · `b` (k, V·16), summed over k in order.
///
/// # Safety
/// The CPU has AVX-512F; `a` holds R rows of k values `a_rs` apart, `b` k rows of V·16 values
/// `b_rs` apart, and `dst` can take R rows of V·16 values `dst_rs` apart.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn kernel<const R: usize, const V: usize>(tile: Tile) {
    use std::arch::x86_64::*;
    let Tile { a, a_rs, b, b_rs, k, dst, dst_rs } = tile;
    let mut acc = [[_mm512_setzero_ps(); V]; R];
    for p in 0..k {
        let mut bv = [_mm512_setzero_ps(); V];
        for (j, v) in bv.iter_mut().enumerate() {
            // SAFETY: row p of `b`, columns 16·j.. < V·16 (the caller's bounds).
            *v = unsafe { _mm512_loadu_ps(b.add(p * b_rs + LANES * j)) };
        }
        for (r, acc) in acc.iter_mut().enumerate() {
            // SAFETY: row r < R of `a`, position p < k.
            let av = _mm512_set1_ps(unsafe { *a.add(r * a_rs + p) });
            for (acc, &bv) in acc.iter_mut().zip(&bv) {
                *acc = _mm512_fmadd_ps(av, bv, *acc);
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        for (j, v) in acc.iter().enumerate() {
            // SAFETY: row r < R of `dst`, columns 16·j.. < V·16.
            unsafe { _mm512_storeu_ps(dst.add(r * dst_rs + LANES * j), *v) };
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn kernel<const R: usize, const V: usize>(_: Tile) {
    unreachable!("tile::available() is false off x86_64")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Strided operands, every tile width and a short last tile of each height, against the f64
    /// product; then a row computed alone gets the same bits as in the batch.
    #[test]
    fn matches_the_product_with_strides_and_any_rows() {
        if !available() {
            eprintln!("this CPU lacks AVX-512F: the register-tile product is not exercised here");
            return;
        }
        for (m, n, k) in [(1, 16, 1), (13, 48, 7), (7, 64, 33), (20, 112, 64), (9, 256, 5)] {
            let (a_rs, b_rs, dst_rs) = (k + 3, n + 16, n + 5);
            let a: Vec<f32> = (0..m * a_rs).map(|i| ((i * 37 % 29) as f32 - 14.0) * 0.13).collect();
            let b: Vec<f32> = (0..k * b_rs).map(|i| ((i * 11 % 23) as f32 - 11.0) * 0.07).collect();
            let mut dst = vec![f32::NAN; m * dst_rs];
            product(&a, a_rs, &b, b_rs, (m, n, k), &mut dst, dst_rs);
            for i in 0..m {
                for j in 0..n {
                    let want: f64 = (0..k).map(|p| a[i * a_rs + p] as f64 * b[p * b_rs + j] as f64).sum();
                    let got = dst[i * dst_rs + j] as f64;
                    assert!(
                        (got - want).abs() < 1e-5 * want.abs().max(1.0),
                        "({m}, {n}, {k}) [{i}, {j}]: {got} vs {want}"
                    );
                }
            }
            for i in [0, m / 2, m - 1] {
                let mut alone = vec![0f32; n];
                product(&a[i * a_rs..], a_rs, &b, b_rs, (1, n, k), &mut alone, n);
                assert!(alone == dst[i * dst_rs..i * dst_rs + n], "({m}, {n}, {k}) row {i} alone differs");
            }
        }
    }
}
