//! The LM head and the distillation loss in chunks of rows, from candle's ops alone: the path of
//! every device and dtype the fused CPU kernel ([`crate::fused`]) does not cover — a GPU, bf16
//! mixed precision.
//!
//! Per chunk of R positions: z = h Wᵀ (R, V) is computed without a graph, turned into a leaf in
//! f32, and the composed loss ([`crate::loss::per_position_loss`]) is differentiated by autograd
//! on that leaf alone: dz (R, V). Then dh = dz W and dW += dzᵀ h, in the compute dtype (cuBLAS on
//! a GPU). The chunk's logits and their gradient are freed before the next chunk, so no (N, V)
//! tensor lives beyond one chunk. What comes back is the loss and an objective with the gradients
//! dh and dW, as from the fused head.

use candle_core::{DType, Result, Tensor, Var};

use crate::fused::{HeadLoss, CHUNK_FLOATS};
use crate::loss::{per_position_loss, LossConfig, PlainTargets};

/// Rows per chunk for a vocabulary of `v`, within the fused head's budget of floats per logits
/// chunk.
pub fn chunk_rows(v: usize) -> usize {
    (CHUNK_FLOATS / v.max(1)).clamp(1, 4096)
}

/// Mean loss over the masked positions of `targets` for hidden states (N, C) and a head (V, C),
/// `rows` positions at a time; the objective's gradients are the loss's, in the dtype of
/// `hidden` and `head`.
pub fn head_loss(
    hidden: &Tensor,
    head: &Tensor,
    targets: &PlainTargets,
    k: usize,
    cfg: &LossConfig,
    rows: usize,
) -> Result<HeadLoss> {
    let (n, c) = hidden.dims2()?;
    let v = head.dim(0)?;
    let device = hidden.device();
    let compute = hidden.dtype();
    if n == 0 {
        return Ok(HeadLoss { loss: 0.0, objective: Tensor::zeros((), compute, device)? });
    }
    let count = targets.mask.iter().map(|m| *m as f64).sum::<f64>().max(1.0);
    let (h_all, w) = (hidden.detach(), head.detach());
    let w_t = w.t()?;
    let (mut loss, mut dh_chunks) = (0f64, Vec::new());
    let mut dw = Tensor::zeros((v, c), DType::F32, device)?;
    let mut start = 0;
    while start < n {
        let r = rows.max(1).min(n - start);
        let h = h_all.narrow(0, start, r)?;
        let z = Var::from_tensor(&h.matmul(&w_t)?.to_dtype(DType::F32)?)?; // (R, V), a leaf
        let chunk = targets.rows(start, r, k).to_tensors(r, k, device)?;
        let mask = chunk.mask.clone();
        let value = (per_position_loss(z.as_tensor(), &chunk, cfg)? * mask)?.sum_all()?.affine(1.0 / count, 0.0)?;
        loss += value.to_scalar::<f32>()? as f64;
        let dz = value.backward()?.remove(z.as_tensor()).map_or_else(|| z.as_tensor().zeros_like(), Ok)?;
        let dz_c = dz.to_dtype(compute)?;
        dh_chunks.push(dz_c.matmul(&w)?); // (R, C)
        dw = (dw + dz_c.t()?.matmul(&h)?.to_dtype(DType::F32)?)?; // (V, C)
        start += r;
    }
    let dh = Tensor::cat(&dh_chunks, 0)?;
    let dw = dw.to_dtype(head.dtype())?;
    // Σ h ⊙ dh + Σ W ⊙ dW: its gradients with respect to h and W are dh and dW. Summed in f32.
    let objective =
        ((hidden * dh)?.to_dtype(DType::F32)?.sum_all()? + (head * dw)?.to_dtype(DType::F32)?.sum_all()?)?;
    Ok(HeadLoss { loss, objective })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fused::tests::{case, config};
    use crate::loss::{Divergence, TailModel};

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        let (a, b) = (a.to_dtype(DType::F32).unwrap(), b.to_dtype(DType::F32).unwrap());
        (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
    }

    fn scale(t: &Tensor) -> f32 {
        t.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap().max(1e-6)
    }

    /// In f32 the chunked head is the fused CPU kernel in value and in both gradients, for every
    /// loss and for chunks smaller and larger than the batch.
    #[test]
    fn chunked_matches_the_fused_head() {
        let (n, c, v, k) = (13, 8, 60, 6);
        let configs = [
            config(Divergence::ForwardKl, 1.0, 1.0, TailModel::Bucket),
            config(Divergence::Jsd { beta: 0.5 }, 0.7, 2.0, TailModel::Bucket),
            config(Divergence::ForwardKl, 0.0, 1.0, TailModel::Bucket),
            config(Divergence::ReverseKl, 1.0, 1.0, TailModel::Uniform),
        ];
        for (ci, cfg) in configs.iter().enumerate() {
            let (hidden, head, targets) = case(n, c, v, k, 100 + ci as u64);
            let fused = crate::fused::head_loss(hidden.as_tensor(), head.as_tensor(), &targets, k, cfg).unwrap();
            let want = fused.objective.backward().unwrap();
            for rows in [4, 13, 100] {
                let got = head_loss(hidden.as_tensor(), head.as_tensor(), &targets, k, cfg, rows).unwrap();
                assert!(
                    (got.loss - fused.loss).abs() < 1e-5 * fused.loss.abs().max(1.0),
                    "{cfg:?}: {} vs {}",
                    got.loss,
                    fused.loss
                );
                let grads = got.objective.backward().unwrap();
                for var in [&hidden, &head] {
                    let (a, b) = (grads.get(var.as_tensor()).unwrap(), want.get(var.as_tensor()).unwrap());
                    let d = max_diff(a, b);
                    assert!(d < 1e-4 * scale(b).max(1.0), "{cfg:?}, {rows} rows: gradient differs by {d}");
                }
            }
        }
    }

    /// In bf16 (mixed precision: bf16 casts of f32 variables), the loss and the gradients that
    /// reach the f32 variables stay within bf16's rounding of the f32 figures.
    #[test]
    fn bf16_gradients_reach_the_f32_variables() {
        let (n, c, v, k) = (16, 32, 80, 8);
        let cfg = config(Divergence::ForwardKl, 0.8, 1.0, TailModel::Bucket);
        let (hidden, head, targets) = case(n, c, v, k, 7);
        let f32_run = head_loss(hidden.as_tensor(), head.as_tensor(), &targets, k, &cfg, 5).unwrap();
        let want = f32_run.objective.backward().unwrap();
        let (h16, w16) =
            (hidden.as_tensor().to_dtype(DType::BF16).unwrap(), head.as_tensor().to_dtype(DType::BF16).unwrap());
        let bf16_run = head_loss(&h16, &w16, &targets, k, &cfg, 5).unwrap();
        assert!(
            (bf16_run.loss - f32_run.loss).abs() < 0.02 * f32_run.loss.abs(),
            "{} vs {}",
            bf16_run.loss,
            f32_run.loss
        );
        let grads = bf16_run.objective.backward().unwrap();
        for var in [&hidden, &head] {
            let got = grads.get(var.as_tensor()).expect("the f32 variable gets a gradient");
            assert_eq!(got.dtype(), DType::F32);
            let b = want.get(var.as_tensor()).unwrap();
            let d = max_diff(got, b);
            assert!(d < 0.03 * scale(b), "bf16 gradient differs by {d} (scale {})", scale(b));
        }
    }
}
