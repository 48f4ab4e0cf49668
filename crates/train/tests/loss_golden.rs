//! Losses and their gradients against the float64 NumPy reference in tests/fixtures/losses.json
//! (made by tests/reference/make_loss_fixtures.py).

use candle_core::{Device, Tensor, Var};
use distill_train::loss::{distillation_loss, LossConfig, PlainTargets};
use serde_json::Value;

fn floats(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

fn ints(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

#[test]
fn every_loss_and_gradient_matches_the_numpy_reference() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/losses.json");
    let f: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let (n, v, k) =
        (f["n"].as_u64().unwrap() as usize, f["v"].as_u64().unwrap() as usize, f["k"].as_u64().unwrap() as usize);
    let dev = Device::Cpu;
    let targets = PlainTargets {
        topk_ids: ints(&f["topk_ids"]),
        topk_logprobs: floats(&f["topk_logprobs"]),
        tail_logprobs: floats(&f["tail_logprobs"]),
        target_ids: ints(&f["target_ids"]),
        mask: floats(&f["mask"]),
    }
    .to_tensors(n, k, &dev)
    .unwrap();
    let logits = Var::from_tensor(&Tensor::from_vec(floats(&f["student_logits"]), (n, v), &dev).unwrap()).unwrap();
    for case in f["cases"].as_array().unwrap() {
        let cfg: LossConfig = serde_json::from_value(case["config"].clone()).unwrap();
        let loss = distillation_loss(logits.as_tensor(), &targets, &cfg).unwrap();
        let value = loss.to_scalar::<f32>().unwrap() as f64;
        let want = case["loss"].as_f64().unwrap();
        assert!((value - want).abs() <= 1e-5 * want.abs().max(1.0), "{cfg:?}: loss {value} vs {want}");
        let grads = loss.backward().unwrap();
        let grad = grads.get(logits.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let want_grad = floats(&case["grad"]);
        let worst = grad.iter().zip(&want_grad).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(worst < 2e-4, "{cfg:?}: gradient differs by {worst}");
        // Masked positions get no gradient.
        let masked_row = &grad[2 * v..3 * v];
        assert!(masked_row.iter().all(|g| *g == 0.0), "{cfg:?}: masked position has a gradient");
    }
}

#[test]
fn divergences_vanish_when_the_student_equals_the_teacher() {
    // Student logits equal to the teacher's full log-probabilities: every divergence is ~0.
    let dev = Device::Cpu;
    let full: Vec<f32> = vec![-0.5, -1.5, -2.5, -3.0, -4.0, -5.0];
    let lse = full.iter().map(|x| x.exp()).sum::<f32>().ln();
    let lp: Vec<f32> = full.iter().map(|x| x - lse).collect();
    let tail = (lp[2..].iter().map(|x| x.exp()).sum::<f32>()).ln();
    let targets = PlainTargets {
        topk_ids: vec![0, 1],
        topk_logprobs: lp[..2].to_vec(),
        tail_logprobs: vec![tail],
        target_ids: vec![0],
        mask: vec![1.0],
    }
    .to_tensors(1, 2, &dev)
    .unwrap();
    let logits = Tensor::from_vec(full, (1, 6), &dev).unwrap();
    for divergence in [
        distill_train::Divergence::ForwardKl,
        distill_train::Divergence::ReverseKl,
        distill_train::Divergence::Jsd { beta: 0.5 },
        distill_train::Divergence::SkewKl { alpha: 0.1 },
        distill_train::Divergence::TotalVariation,
    ] {
        let cfg = LossConfig { divergence, ..Default::default() };
        let value = distillation_loss(&logits, &targets, &cfg).unwrap().to_scalar::<f32>().unwrap();
        assert!(value.abs() < 1e-5, "{divergence:?}: {value}");
    }
}
