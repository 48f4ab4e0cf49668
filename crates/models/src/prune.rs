//! Students made from a teacher by dropping whole layers (every n-th, listed, or the ones that
//! change the hidden state least on calibration data, as ShortGPT does) and,
//! optionally, the least important MLP channels and attention-head groups (Minitron-style width
//! pruning, ranked by activation energy on calibration data: see [`crate::llama::ActivationProbe`]).

use std::collections::HashMap;

use candle_core::Tensor;

use crate::error::{Error, Result};
use crate::llama::{ActivationProbe, LlamaConfig};

/// Teacher layers 0, n, 2n, …: every `stride`-th layer.
pub fn every_nth_layer(num_layers: usize, stride: usize) -> Vec<usize> {
    (0..num_layers).step_by(stride.max(1)).collect()
}

/// The `n` layers that turn the hidden state most on the data `probes` were gathered on (one probe
/// per layer of the full model; see [`ActivationProbe::influence`]), ascending. The first and last
/// layers are usually among them; the near-identity layers in between are the ones dropped.
pub fn most_influential_layers(probes: &[ActivationProbe], n: usize) -> Result<Vec<usize>> {
    if n == 0 || n > probes.len() {
        return Err(Error::Config(format!("can keep between 1 and the model's {} layers, not {n}", probes.len())));
    }
    let mut order: Vec<usize> = (0..probes.len()).collect();
    order.sort_by(|&a, &b| probes[b].influence().total_cmp(&probes[a].influence()).then(a.cmp(&b)));
    let mut keep = order[..n].to_vec();
    keep.sort_unstable();
    Ok(keep)
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
    // Sliding and global layers stay what they were (Gemma 3's pattern no longer follows from
    // the layer count).
    let sliding = cfg.sliding_layers();
    let layer_types = (cfg.layer_types.is_some() || sliding.contains(&true)).then(|| {
        keep.iter().map(|&l| if sliding[l] { "sliding_attention" } else { "full_attention" }.to_string()).collect()
    });
    let student = LlamaConfig { num_hidden_layers: keep.len(), layer_types, ..cfg.clone() };
    Ok((student, out))
}

/// How wide the pruned student is; `None` keeps the dimension.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Width {
    pub intermediate_size: Option<usize>,
    /// Must be a multiple of the query heads per key/value head: whole GQA groups are dropped.
    pub num_attention_heads: Option<usize>,
}

/// Drops, in every layer, the MLP channels and attention-head groups with the lowest scores in
/// `probes` (one per layer, gathered on this model). Kept channels and heads stay in their order.
/// A group's score is the sum of its query heads' scores; its key/value head goes with it.
pub fn prune_width(
    cfg: &LlamaConfig,
    weights: &HashMap<String, Tensor>,
    probes: &[ActivationProbe],
    width: Width,
) -> Result<(LlamaConfig, HashMap<String, Tensor>)> {
    let (h, kv, d) = (cfg.num_attention_heads, cfg.num_kv_heads(), cfg.head_dim());
    let group = h / kv;
    let inter = width.intermediate_size.unwrap_or(cfg.intermediate_size);
    let heads = width.num_attention_heads.unwrap_or(h);
    if inter == 0 || inter > cfg.intermediate_size {
        return Err(Error::Config(format!(
            "intermediate_size {inter} must be between 1 and the model's {}",
            cfg.intermediate_size
        )));
    }
    if heads == 0 || heads > h || !heads.is_multiple_of(group) {
        let options: Vec<String> = (1..=kv).map(|g| (g * group).to_string()).collect();
        return Err(Error::Config(format!(
            "num_attention_heads {heads}: whole groups of {group} query heads (one per key/value head) are pruned, so choose one of {}",
            options.join(", ")
        )));
    }
    if probes.len() != cfg.num_hidden_layers {
        return Err(Error::Config(format!("{} probes for {} layers", probes.len(), cfg.num_hidden_layers)));
    }
    let mut out = weights.clone();
    for (layer, probe) in probes.iter().enumerate() {
        let p = format!("model.layers.{layer}.");
        let get = |name: &str| -> Result<&Tensor> {
            weights.get(&format!("{p}{name}")).ok_or_else(|| Error::tensor(format!("{p}{name}"), "is missing"))
        };
        let device = get("mlp.up_proj.weight")?.device().clone();
        let index =
            |ids: &[usize]| Tensor::from_vec(ids.iter().map(|&i| i as u32).collect::<Vec<_>>(), ids.len(), &device);
        if inter < cfg.intermediate_size {
            let keep = index(&top(&probe.mlp_scores(), inter))?;
            for name in ["mlp.gate_proj.weight", "mlp.up_proj.weight"] {
                out.insert(format!("{p}{name}"), get(name)?.index_select(&keep, 0)?);
            }
            out.insert(format!("{p}mlp.down_proj.weight"), get("mlp.down_proj.weight")?.index_select(&keep, 1)?);
        }
        if heads < h {
            let scores = probe.head_scores();
            let groups: Vec<f64> = scores.chunks(group).map(|c| c.iter().sum()).collect();
            let kept_groups = top(&groups, heads / group);
            let rows = |per: usize| -> Vec<usize> {
                kept_groups.iter().flat_map(|g| (g * per * d..(g + 1) * per * d).collect::<Vec<_>>()).collect()
            };
            let (q_rows, kv_rows) = (index(&rows(group))?, index(&rows(1))?);
            for (name, rows) in [("q_proj", &q_rows), ("k_proj", &kv_rows), ("v_proj", &kv_rows)] {
                for kind in ["weight", "bias"] {
                    let key = format!("{p}self_attn.{name}.{kind}");
                    if let Some(t) = weights.get(&key) {
                        out.insert(key, t.index_select(rows, 0)?);
                    }
                }
            }
            out.insert(
                format!("{p}self_attn.o_proj.weight"),
                get("self_attn.o_proj.weight")?.index_select(&q_rows, 1)?,
            );
        }
    }
    let student = LlamaConfig {
        intermediate_size: inter,
        num_attention_heads: heads,
        num_key_value_heads: Some(heads / group),
        head_dim: Some(d),
        ..cfg.clone()
    };
    Ok((student, out))
}

/// Indices of the `n` highest scores, ascending.
fn top(scores: &[f64], n: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|a, b| scores[*b].total_cmp(&scores[*a]).then(a.cmp(b)));
    let mut kept = order[..n.min(order.len())].to_vec();
    kept.sort_unstable();
    kept
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

    /// Probes of `model` over one packed row of `ids`.
    fn probe(model: &Llama, ids: &[u32]) -> Vec<ActivationProbe> {
        let t = ids.len();
        let input = Tensor::from_vec(ids.to_vec(), (1, t), &Device::Cpu).unwrap();
        let positions: Vec<u32> = (0..t as u32).collect();
        let mut probes = vec![ActivationProbe::default(); model.config().num_hidden_layers];
        model.probe_activations(&input, &positions, &vec![1; t], &mut probes).unwrap();
        probes
    }

    fn zero_rows(w: &mut HashMap<String, Tensor>, name: &str, rows: std::ops::Range<usize>) {
        let t = &w[name];
        let mask: Vec<f32> = (0..t.dim(0).unwrap()).map(|r| if rows.contains(&r) { 0.0 } else { 1.0 }).collect();
        let mask = Tensor::from_vec(mask, (t.dim(0).unwrap(), 1), &Device::Cpu).unwrap();
        let zeroed = t.broadcast_mul(&mask).unwrap();
        w.insert(name.to_string(), zeroed);
    }

    #[test]
    fn width_pruning_drops_exactly_the_channels_and_heads_that_do_nothing() {
        // Channels 5..13 of every MLP and key/value head 1 (query heads 2, 3) are made inert; pruning
        // to the remaining width must pick exactly those, leaving the logits unchanged.
        let cfg = tiny_config(); // 4 heads, 2 kv heads, intermediate 64
        let mut w = random_weights(&cfg, 7, &Device::Cpu).unwrap();
        let d = cfg.head_dim();
        for layer in 0..cfg.num_hidden_layers {
            zero_rows(&mut w, &format!("model.layers.{layer}.mlp.up_proj.weight"), 5..13);
            zero_rows(&mut w, &format!("model.layers.{layer}.self_attn.v_proj.weight"), d..2 * d);
        }
        let ids = [3u32, 40, 7, 99, 12, 5, 61];
        let model = Llama::from_weights(cfg.clone(), &w).unwrap();
        let probes = probe(&model, &ids);
        assert_eq!(probes[0].positions, ids.len());
        assert!(probes[0].mlp_scores()[5..13].iter().all(|&s| s == 0.0));
        assert!(probes[0].head_scores()[2..].iter().all(|&s| s == 0.0) && probes[0].head_scores()[0] > 0.0);
        let width = Width { intermediate_size: Some(56), num_attention_heads: Some(2) };
        let (small_cfg, small) = prune_width(&cfg, &w, &probes, width).unwrap();
        assert_eq!((small_cfg.intermediate_size, small_cfg.num_attention_heads, small_cfg.num_kv_heads()), (56, 2, 1));
        assert!(small_cfg.num_parameters() < cfg.num_parameters());
        let student = Llama::from_weights(small_cfg, &small).unwrap();
        let input = Tensor::new(&ids[..], &Device::Cpu).unwrap().unsqueeze(0).unwrap();
        let full = model.forward(&input).unwrap();
        let pruned = student.forward(&input).unwrap();
        let diff = (full - pruned).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-5, "logits moved by {diff}");
    }

    #[test]
    fn the_layer_that_does_nothing_is_the_one_dropped() {
        // Layer 1 of 3 adds nothing to the residual stream (its output projections are zero): it
        // turns no position, and keeping two layers keeps 0 and 2.
        let cfg = LlamaConfig { num_hidden_layers: 3, ..tiny_config() };
        let mut w = random_weights(&cfg, 11, &Device::Cpu).unwrap();
        for name in ["self_attn.o_proj.weight", "mlp.down_proj.weight"] {
            let name = format!("model.layers.1.{name}");
            let rows = w[&name].dim(0).unwrap();
            zero_rows(&mut w, &name, 0..rows);
        }
        let probes = probe(&Llama::from_weights(cfg.clone(), &w).unwrap(), &[3, 40, 7, 99, 12]);
        assert!(probes[1].influence().abs() < 1e-6, "{}", probes[1].influence());
        assert!(probes[0].influence() > 1e-3 && probes[2].influence() > 1e-3);
        assert_eq!(most_influential_layers(&probes, 2).unwrap(), vec![0, 2]);
        assert_eq!(most_influential_layers(&probes, 3).unwrap(), vec![0, 1, 2]);
        assert!(most_influential_layers(&probes, 4).unwrap_err().to_string().contains("between 1 and the model's 3"));
    }

    #[test]
    fn width_that_splits_a_head_group_is_refused_with_the_options() {
        let cfg = tiny_config();
        let w = random_weights(&cfg, 7, &Device::Cpu).unwrap();
        let probes = probe(&Llama::from_weights(cfg.clone(), &w).unwrap(), &[1, 2, 3]);
        let err = prune_width(&cfg, &w, &probes, Width { num_attention_heads: Some(3), ..Width::default() })
            .unwrap_err()
            .to_string();
        assert!(err.contains("choose one of 2, 4"), "{err}");
        let err = prune_width(&cfg, &w, &probes, Width { intermediate_size: Some(65), ..Width::default() })
            .unwrap_err()
            .to_string();
        assert!(err.contains("between 1 and the model's 64"), "{err}");
    }
}
