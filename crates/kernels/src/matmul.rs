//! Strided f32 matrix products through the `gemm` crate, behind a bounds-checked safe wrapper:
//! the trainer's fused head and the attention kernel multiply views of larger buffers
//! (transposes, one head's columns) without copying them out first.

/// A matrix operand: element (i, j) is `data[i·rs + j·cs]`.
#[derive(Clone, Copy)]
pub struct Operand<'a> {
    pub data: &'a [f32],
    pub rs: usize,
    pub cs: usize,
}

impl<'a> Operand<'a> {
    /// A row-major matrix whose rows are `cols` apart.
    pub fn rows(data: &'a [f32], cols: usize) -> Self {
        Self { data, rs: cols, cs: 1 }
    }

    /// The transpose of a row-major matrix whose rows are `cols` apart.
    pub fn transposed(data: &'a [f32], cols: usize) -> Self {
        Self { data, rs: 1, cs: cols }
    }

    /// Whether every element of an (m, k) matrix lies inside `data`.
    fn covers(&self, m: usize, k: usize) -> bool {
        m == 0 || k == 0 || (m - 1) * self.rs + (k - 1) * self.cs < self.data.len()
    }
}

/// How a product may use the thread pool.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Threads {
    /// Split over rayon's threads: one large product.
    Pool,
    /// On the calling thread: one of many small products already running in parallel.
    Caller,
}

/// `dst` (m, n), rows `dst_rs` apart, = lhs (m, k) · rhs (k, n), or `dst +=` it with
/// `accumulate`.
pub fn gemm_into(
    dst: &mut [f32],
    dst_rs: usize,
    (m, n, k): (usize, usize, usize),
    lhs: Operand,
    rhs: Operand,
    accumulate: bool,
    threads: Threads,
) {
    let dst_fits = m == 0 || n == 0 || (dst_rs >= n && (m - 1) * dst_rs + n <= dst.len());
    assert!(dst_fits && lhs.covers(m, k) && rhs.covers(k, n), "gemm operands out of bounds");
    if m == 0 || n == 0 {
        return;
    }
    let parallelism = match threads {
        Threads::Pool => gemm::Parallelism::Rayon(rayon::current_num_threads()),
        Threads::Caller => gemm::Parallelism::None,
    };
    // SAFETY: the assert above keeps every index gemm computes from the strides inside the three
    // slices, and `dst` is borrowed mutably, so it aliases neither operand.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Transposed and strided operands, a strided destination and accumulation, against loops.
    #[test]
    fn strided_products_match_loops() {
        let (m, n, k) = (5usize, 7usize, 3usize);
        let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect(); // (m, k)
        let bt: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.71).cos()).collect(); // (n, k): b transposed
        let dst_rs = n + 2;
        let mut dst = vec![1f32; m * dst_rs];
        for (accumulate, threads) in [(false, Threads::Pool), (true, Threads::Caller)] {
            let before = dst.clone();
            gemm_into(
                &mut dst,
                dst_rs,
                (m, n, k),
                Operand::rows(&a, k),
                Operand::transposed(&bt, k),
                accumulate,
                threads,
            );
            for i in 0..m {
                for j in 0..dst_rs {
                    let got = dst[i * dst_rs + j];
                    if j >= n {
                        assert_eq!(got, before[i * dst_rs + j], "padding column ({i}, {j}) was written");
                        continue;
                    }
                    let product: f32 = (0..k).map(|l| a[i * k + l] * bt[j * k + l]).sum();
                    let want = product + if accumulate { before[i * dst_rs + j] } else { 0.0 };
                    assert!((got - want).abs() < 1e-5, "({i}, {j}): {got} vs {want}");
                }
            }
        }
    }

    #[test]
    #[should_panic(expected = "out of bounds")]
    fn an_operand_too_short_is_refused() {
        let mut dst = vec![0f32; 4];
        gemm_into(
            &mut dst,
            2,
            (2, 2, 2),
            Operand::rows(&[0.0; 3], 2),
            Operand::rows(&[0.0; 4], 2),
            false,
            Threads::Caller,
        );
    }
}
