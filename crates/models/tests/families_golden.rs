//! Every decoder family against Hugging Face `transformers` on tiny random-weight models:
//! logits on a short and a long sequence, and the gradient of the next-token cross-entropy for
//! every parameter (`tests/reference/make_family_fixtures.py` wrote the fixtures).

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor, Var, D};
use distill_models::{hf_config, loader, ops, Llama};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/families").join(name)
}

fn max_abs(t: &Tensor) -> f32 {
    t.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

/// Largest difference relative to the reference's largest magnitude.
fn rel_diff(got: &Tensor, want: &Tensor) -> f32 {
    max_abs(&(got - want).unwrap()) / max_abs(want).max(1e-6)
}

fn check_family(name: &str) {
    let dir = fixture(name);
    let cfg = loader::config_file(&dir.join("config.json")).unwrap();
    let expected =
        candle_core::safetensors::load(fixture(&format!("{name}.expected.safetensors")), &Device::Cpu).unwrap();
    let checkpoint = loader::safetensors_weights(&dir, &Device::Cpu).unwrap();
    let vars: HashMap<String, Var> =
        checkpoint.iter().map(|(n, t)| (n.clone(), Var::from_tensor(t).unwrap())).collect();
    let tensors = vars.iter().map(|(n, v)| (n.clone(), v.as_tensor().clone())).collect();
    let model = Llama::from_weights(cfg.clone(), &hf_config::unfuse(&cfg, tensors).unwrap()).unwrap();

    let ids = |key: &str| expected[key].to_dtype(DType::U32).unwrap().unsqueeze(0).unwrap();
    let long = model.forward(&ids("ids_long")).unwrap().squeeze(0).unwrap();
    let diff = rel_diff(&long, &expected["logits_long"]);
    assert!(diff < 1e-4, "{name}: logits on 40 tokens differ from transformers by {diff} (relative)");

    let short_ids = ids("ids_short");
    let logits = model.forward(&short_ids).unwrap().squeeze(0).unwrap(); // (T, V)
    let diff = rel_diff(&logits.detach(), &expected["logits_short"]);
    assert!(diff < 1e-4, "{name}: logits on 20 tokens differ from transformers by {diff} (relative)");

    // Mean next-token cross-entropy, as the fixture's loss.
    let t = logits.dim(0).unwrap();
    let logp = ops::log_softmax_last_dim(&logits.narrow(0, 0, t - 1).unwrap()).unwrap();
    let targets = short_ids.squeeze(0).unwrap().narrow(0, 1, t - 1).unwrap().unsqueeze(1).unwrap();
    let loss = logp.gather(&targets, D::Minus1).unwrap().mean_all().unwrap().neg().unwrap();
    let want_loss = expected["loss"].to_vec1::<f32>().unwrap()[0];
    let got_loss = loss.to_scalar::<f32>().unwrap();
    assert!((got_loss - want_loss).abs() < 1e-4, "{name}: loss {got_loss} vs transformers {want_loss}");
    let grads = loss.backward().unwrap();
    for (param, var) in &vars {
        let want = expected
            .get(&format!("grad.{param}"))
            .unwrap_or_else(|| panic!("{name}: no reference gradient for {param}"));
        let got = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("{name}: no gradient for {param}"));
        let diff = rel_diff(got, want);
        assert!(diff < 2e-3, "{name}: gradient of {param} differs from transformers by {diff} (relative)");
    }
}

#[test]
fn llama3_rope_scaling_matches_transformers() {
    check_family("llama3");
}

#[test]
fn qwen3_matches_transformers() {
    check_family("qwen3");
}

#[test]
fn phi3_fused_projections_longrope_and_sliding_window_match_transformers() {
    check_family("phi3");
}

#[test]
fn gemma3_matches_transformers() {
    check_family("gemma3");
}
