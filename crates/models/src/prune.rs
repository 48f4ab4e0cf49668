//! Students made from a teacher by dropping whole layers (DistilBERT-style layer selection).

use std::collections::HashMap;

use candle_core::Tensor;

use crate::error::{Error, Result};
use crate::llama::LlamaConfig;

/// Teacher layers 0, n, 2n, …: every `stride`-th layer.
pub fn every_nth_layer(num_layers: usize, stride: usize) -> Vec<usize> {
    (0..num_layers).step_by(stride.max(1)).collect()
}

/// Keeps the teacher's blocks listed in `keep` (ascending, distinct), renumbered from 0; the
/// embedding, final norm and head are kept as they are.
pub fn prune_layers(
    cfg: &LlamaConfig,
    weights: &HashMap<String, Tensor>,
    keep: &[usize],
) -> Result<(LlamaConfig, HashMap<String, Tensor>)> {
    if keep.is_empty() {
        return Err(Error::Config("a pruned student needs at least one layer".into()));
    }
    if let Some(w) = keep.windows(2).find(|w| w[0] >= w[1]) {
        return Err(Error::Config(format!(
            "layers to keep must be ascending and distinct, found {} then {}",
            w[0], w[1]
        )));
    }
    if let Some(&last) = keep.last().filter(|&&l| l >= cfg.num_hidden_layers) {
        return Err(Error::Config(format!(
            "layer {last} does not exist: the teacher has {} layers",
            cfg.num_hidden_layers
        )));
    }
    let mut out = HashMap::new();
    for (name, t) in weights {
        match name.strip_prefix("model.layers.").and_then(|rest| rest.split_once('.')) {
            Some((layer, tail)) => {
                let layer: usize =
                    layer.parse().map_err(|_| Error::tensor(name.as_str(), "has a non-numeric layer index"))?;
                if let Some(new) = keep.iter().position(|&k| k == layer) {
                    out.insert(format!("model.layers.{new}.{tail}"), t.clone());
                }
            }
            None => {
                out.insert(name.clone(), t.clone());
            }
        }
    }
    let student = LlamaConfig { num_hidden_layers: keep.len(), ..cfg.clone() };
    Ok((student, out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::tiny_config;
    use crate::init::random_weights;
    use crate::Llama;
    use candle_core::Device;

    #[test]
    fn keeping_every_layer_changes_nothing_and_a_subset_keeps_exact_tensors() {
        let cfg = LlamaConfig { num_hidden_layers: 4, ..tiny_config() };
        let w = random_weights(&cfg, 3, &Device::Cpu).unwrap();
        let ids = Tensor::new(&[[3u32, 40, 7, 99]], &Device::Cpu).unwrap();
        let full = Llama::from_weights(cfg.clone(), &w).unwrap().forward(&ids).unwrap();
        let (same_cfg, same) = prune_layers(&cfg, &w, &[0, 1, 2, 3]).unwrap();
        let again = Llama::from_weights(same_cfg, &same).unwrap().forward(&ids).unwrap();
        let diff = (full - again).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(diff, 0.0);

        let keep = every_nth_layer(4, 3);
        assert_eq!(keep, vec![0, 3]);
        let (small_cfg, small) = prune_layers(&cfg, &w, &keep).unwrap();
        assert_eq!(small_cfg.num_hidden_layers, 2);
        let student = Llama::from_weights(small_cfg, &small).unwrap();
        let eq = |a: &str, b: &str| {
            let d = (&small[a] - &w[b]).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert_eq!(d, 0.0, "{a} != teacher {b}");
        };
        eq("model.layers.1.mlp.down_proj.weight", "model.layers.3.mlp.down_proj.weight");
        eq("model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.q_proj.weight");
        eq("model.embed_tokens.weight", "model.embed_tokens.weight");
        assert_eq!(student.forward(&ids).unwrap().dims(), &[1, 4, cfg.vocab_size]);
    }

    #[test]
    fn every_third_layer_of_smollm2_is_the_reference_student_size() {
        // DESIGN.md's reference student: 10 of 30 layers, 63.7M parameters.
        let cfg = LlamaConfig::smollm2_135m();
        let keep = every_nth_layer(cfg.num_hidden_layers, 3);
        assert_eq!(keep.len(), 10);
        let student = LlamaConfig { num_hidden_layers: keep.len(), ..cfg };
        assert_eq!((student.num_parameters() as f64 / 1e5).round() / 10.0, 63.7);
    }

    #[test]
    fn bad_layer_lists_are_refused() {
        let cfg = tiny_config();
        let w = random_weights(&cfg, 4, &Device::Cpu).unwrap();
        for (keep, needle) in [(vec![], "at least one"), (vec![1, 0], "ascending"), (vec![0, 5], "does not exist")] {
            let err = prune_layers(&cfg, &w, &keep).unwrap_err().to_string();
            assert!(err.contains(needle), "{keep:?}: {err}");
        }
    }
}
