//! The fused attention behind [`super::attention`]: `distill_kernels::attention` as a candle op.

use super::{cpu_f32, operands3};
use crate::cpu::with_f32_data;
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use distill_kernels::attention::{self as kernel, Dims, Mask};

/// softmax(q kᵀ · scale + mask) v for q (B, N, T, D), k and v (B, G, S, D), the mask (B or 1, 1,
/// T, S) held by the op (it is a constant); output (B, T, N·D).
#[derive(Clone)]
pub(super) struct Attention {
    dims: Dims,
    mask: Tensor,
    scale: f32,
}

impl Attention {
    pub(super) fn fits(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor, scale: f64) -> Option<Self> {
        let (b, n, t, d) = q.dims4().ok()?;
        let (kb, g, s, kd) = k.dims4().ok()?;
        let (mb, mh, mt, ms) = mask.dims4().ok()?;
        let shapes_fit = kb == b && kd == d && v.dims() == k.dims() && g > 0 && n.is_multiple_of(g);
        let mask_fits = mh == 1 && mt == t && ms == s && (mb == b || mb == 1) && s > 0;
        if !(cpu_f32(&[q, k, v, mask]) && shapes_fit && mask_fits) {
            return None;
        }
        Some(Self {
            dims: Dims { batch: b, heads: n, kv_heads: g, queries: t, keys: s, head_dim: d },
            mask: mask.contiguous().ok()?,
            scale: scale as f32,
        })
    }

    /// Calls `f` with the mask's data as the kernel takes it.
    fn with_mask<R>(&self, f: impl FnOnce(Mask) -> R) -> Result<R> {
        let per_batch = self.mask.dim(0)? == self.dims.batch && self.dims.batch > 1;
        match with_f32_data(&self.mask, |data| f(Mask { data, per_batch })) {
            Some(r) => Ok(r),
            None => candle_core::bail!("attention: the mask must be contiguous f32 on the CPU"),
        }
    }
}

const QKV: [&str; 3] = ["queries", "keys", "values"];

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (q, k, v) = operands3("attention", QKV, (s1, l1), (s2, l2), (s3, l3))?;
        let Dims { batch: b, heads: n, queries: t, head_dim: d, .. } = self.dims;
        let mut out = vec![0f32; b * t * n * d];
        self.with_mask(|mask| kernel::forward(&self.dims, q, k, v, mask, self.scale, &mut out))?;
        Ok((CpuStorage::F32(out), Shape::from((b, t, n * d))))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // One pass computes all three gradients, end to end in one flat tensor.
        let op = AttentionGrad { forward: self.clone(), grad: grad.contiguous()? };
        let all = q.apply_op3_no_bwd(k, v, &op)?;
        let (nq, nk) = (q.elem_count(), k.elem_count());
        let dq = all.narrow(0, 0, nq)?.reshape(q.shape())?;
        let dk = all.narrow(0, nq, nk)?.reshape(k.shape())?;
        let dv = all.narrow(0, nq + nk, nk)?.reshape(v.shape())?;
        Ok((Some(dq), Some(dk), Some(dv)))
    }
}

/// Backward of [`Attention`] from its inputs and the output's gradient (held by the op).
struct AttentionGrad {
    forward: Attention,
    grad: Tensor,
}

impl CustomOp3 for AttentionGrad {
    fn name(&self) -> &'static str {
        "attention-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (q, k, v) = operands3("attention backward", QKV, (s1, l1), (s2, l2), (s3, l3))?;
        let mut all = vec![0f32; q.len() + 2 * k.len()];
        let (dq, rest) = all.split_at_mut(q.len());
        let (dk, dv) = rest.split_at_mut(k.len());
        let f = &self.forward;
        let ran = with_f32_data(&self.grad, |grad| {
            f.with_mask(|mask| kernel::backward(&f.dims, q, k, v, mask, f.scale, grad, (dq, dk, dv)))
        });
        match ran {
            Some(r) => r?,
            None => candle_core::bail!("attention backward: the gradient must be contiguous f32 on the CPU"),
        }
        let len = all.len();
        Ok((CpuStorage::F32(all), Shape::from(len)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::{assert_matches_composed, values};
    use crate::ops::{attention, causal_mask, repeat_kv, softmax_last_dim, MASKED};
    use candle_core::{DType, Device};

    /// The fused op against candle's composed ops, outputs and the gradients of q, k and v:
    /// grouped-query heads, a causal mask after cached keys, and a per-row mask with a padding
    /// query that sees nothing.
    #[test]
    fn fused_attention_matches_the_composed_ops() {
        let dev = Device::Cpu;
        let (b, n, g, t, past, d) = (2usize, 4usize, 2usize, 37usize, 3usize, 8usize);
        let s = past + t;
        let causal = causal_mask(t, past, DType::F32, &dev).unwrap();
        let per_row: Vec<f32> = (0..b * t * s)
            .map(|i| {
                let (row, q, key) = (i / (t * s), (i / s) % t, i % s);
                let open = key <= past + q && !(row == 1 && q == 5) && key >= row;
                if open {
                    0.0
                } else {
                    MASKED
                }
            })
            .collect();
        let per_row = Tensor::from_vec(per_row, (b, 1, t, s), &dev).unwrap();
        let tensor = |dims: (usize, usize, usize, usize), seed| {
            Tensor::from_vec(values(dims.0 * dims.1 * dims.2 * dims.3, seed), dims, &dev).unwrap()
        };
        let inputs = [tensor((b, n, t, d), 1), tensor((b, g, s, d), 2), tensor((b, g, s, d), 3)];
        for mask in [&causal, &per_row] {
            let fused = |x: &[Tensor]| {
                assert!(Attention::fits(&x[0], &x[1], &x[2], mask, 0.3).is_some(), "the fused path must be taken");
                attention(&x[0], &x[1], &x[2], mask, 0.3)
            };
            let composed = |x: &[Tensor]| {
                let (k, v) = (repeat_kv(&x[1], n / g)?, repeat_kv(&x[2], n / g)?);
                let scores = (x[0].matmul(&k.t()?)? * 0.3)?.broadcast_add(mask)?;
                softmax_last_dim(&scores)?.matmul(&v)?.transpose(1, 2)?.reshape((b, t, n * d))
            };
            assert_matches_composed(&inputs, &fused, &composed, 2e-5);
        }
    }
}
