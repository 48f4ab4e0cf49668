//! The decoder of every family `distill` runs: Llama 2/3, SmolLM/SmolLM2, Mistral, Qwen2, Qwen3,
//! Phi-3 and Gemma 3. What sets each apart from Llama is switched by [`crate::family::Family`],
//! whose module has the table.
//!
//! One set of weights, two entry points: [`Llama::forward`] returns logits for every position
//! (training, teacher scoring) and [`Llama::step`] decodes with a KV cache. Both run the same
//! blocks, built only from differentiable ops (see `ops`), so every parameter gets a gradient.

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use distill_kernels::packed::{PackedWeight, Precision};
use distill_kernels::quant::QuantMatrix;

use crate::error::{Error, Result};
use crate::family::{Activation, Family, LayerAttention};
use crate::frame::{Frame, RopeTables};
use crate::ops;
use crate::proj::{self, pack_weight, Proj, Weight};

pub use crate::kv_cache::KvCache;
pub use crate::llama_config::{LlamaConfig, RopeScaling, TokenIds};
pub use crate::probe::ActivationProbe;

struct Block {
    attention: LayerAttention,
    attn_norm: Tensor,
    /// Qwen3, Gemma 3: RMSNorm over each head of q and k, before RoPE.
    q_norm: Option<Tensor>,
    k_norm: Option<Tensor>,
    /// Gemma 3: norms of the attention's and the MLP's outputs, before each residual add.
    post_attn_norm: Option<Tensor>,
    post_mlp_norm: Option<Tensor>,
    q_proj: Proj,
    k_proj: Proj,
    v_proj: Proj,
    q_bias: Option<Tensor>,
    k_bias: Option<Tensor>,
    v_bias: Option<Tensor>,
    o_proj: Proj,
    mlp_norm: Tensor,
    gate_proj: Proj,
    up_proj: Proj,
    down_proj: Proj,
}

/// The token embedding: a tensor, or a GGUF file's quantised blocks (rows dequantised as they
/// are looked up).
enum Embedding {
    Plain(Tensor),
    Quant(Arc<QuantMatrix>),
}

/// A Llama-family decoder. Weights are plain tensors (pass `Var`-backed tensors to train), or a
/// GGUF file's quantised blocks for inference ([`Llama::from_parts`]).
pub struct Llama {
    cfg: LlamaConfig,
    family: Family,
    /// The attention of the layers that slide, if any do.
    sliding: Option<LayerAttention>,
    embed: Embedding,
    blocks: Vec<Block>,
    norm: Tensor,
    /// None when tied to the embedding.
    lm_head: Option<Proj>,
    /// The output projection packed for a matmul kernel, once [`Llama::use_packed_matmuls`] is on.
    lm_head_packed: Option<Arc<PackedWeight>>,
    rope: RopeTables,
}

impl Block {
    /// The seven projections, for what is done to each alike (packing, dequantising).
    fn projections_mut(&mut self) -> [&mut Proj; 7] {
        [
            &mut self.q_proj,
            &mut self.k_proj,
            &mut self.v_proj,
            &mut self.o_proj,
            &mut self.gate_proj,
            &mut self.up_proj,
            &mut self.down_proj,
        ]
    }
}

/// HF tensor names of one block's parameters (Llama's; Gemma names the norm before the MLP
/// `pre_feedforward_layernorm`, as `post_attention_layernorm` is its norm after attention).
fn block_names(i: usize, family: &Family) -> [(&'static str, String); 9] {
    let p = format!("model.layers.{i}");
    let mlp_norm = if family.sandwich_norms { "pre_feedforward_layernorm" } else { "post_attention_layernorm" };
    [
        ("attn_norm", format!("{p}.input_layernorm.weight")),
        ("q", format!("{p}.self_attn.q_proj.weight")),
        ("k", format!("{p}.self_attn.k_proj.weight")),
        ("v", format!("{p}.self_attn.v_proj.weight")),
        ("o", format!("{p}.self_attn.o_proj.weight")),
        ("mlp_norm", format!("{p}.{mlp_norm}.weight")),
        ("gate", format!("{p}.mlp.gate_proj.weight")),
        ("up", format!("{p}.mlp.up_proj.weight")),
        ("down", format!("{p}.mlp.down_proj.weight")),
    ]
}

/// HF names of the norms some families add to a block: q/k head norms, then the norms after
/// attention and after the MLP.
fn extra_norm_names(i: usize, family: &Family) -> Vec<(String, bool)> {
    let p = format!("model.layers.{i}");
    let mut names = Vec::new();
    if family.qk_norm {
        names.push((format!("{p}.self_attn.q_norm.weight"), true));
        names.push((format!("{p}.self_attn.k_norm.weight"), true));
    }
    if family.sandwich_norms {
        names.push((format!("{p}.post_attention_layernorm.weight"), false));
        names.push((format!("{p}.post_feedforward_layernorm.weight"), false));
    }
    names
}

impl Llama {
    /// Builds the model from tensors named as in HF checkpoints, checking every shape.
    pub fn from_weights(cfg: LlamaConfig, weights: &HashMap<String, Tensor>) -> Result<Self> {
        let parts = weights.iter().map(|(name, t)| (name.clone(), Weight::Plain(t.clone()))).collect();
        Self::from_parts(cfg, &parts)
    }

    /// Builds the model from weights named as in HF checkpoints, checking every shape. Quantised
    /// projections, output head and embedding run the quantised kernel
    /// (`distill_kernels::quant`) from the start: inference only, as [`Self::use_packed_matmuls`].
    pub fn from_parts(cfg: LlamaConfig, weights: &HashMap<String, Weight>) -> Result<Self> {
        cfg.validate()?;
        let (c, i, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
        let (h, kv, d) = (cfg.num_attention_heads, cfg.num_kv_heads(), cfg.head_dim());
        let weight = |name: &str, shape: &[usize]| -> Result<Weight> {
            let w = weights.get(name).ok_or_else(|| Error::tensor(name, "is missing from the checkpoint"))?;
            if w.dims() != shape {
                return Err(Error::tensor(name, format!("has shape {:?}, the config implies {shape:?}", w.dims())));
            }
            Ok(w.clone())
        };
        let proj = |name: &str, shape: &[usize]| weight(name, shape).map(Proj::from);
        let device = match weights.get("model.norm.weight") {
            Some(Weight::Plain(t)) => t.device().clone(),
            _ => Device::Cpu,
        };
        let get = |name: &str, shape: &[usize]| -> Result<Tensor> { Ok(weight(name, shape)?.tensor(&device)?) };
        let family = cfg.family();
        let layer_attention = cfg.layer_attention();
        let mut blocks = Vec::with_capacity(cfg.num_hidden_layers);
        for (layer, &attention) in layer_attention.iter().enumerate() {
            let n = block_names(layer, &family);
            let mut extra = extra_norm_names(layer, &family)
                .into_iter()
                .map(|(name, per_head)| get(&name, &[if per_head { d } else { c }]))
                .collect::<Result<Vec<_>>>()?
                .into_iter();
            let (q_norm, k_norm) = if family.qk_norm { (extra.next(), extra.next()) } else { (None, None) };
            let (post_attn_norm, post_mlp_norm) =
                if family.sandwich_norms { (extra.next(), extra.next()) } else { (None, None) };
            let bias = |proj: &str, len: usize| -> Result<Option<Tensor>> {
                if cfg.qkv_bias() {
                    let name = format!("model.layers.{layer}.self_attn.{proj}.bias");
                    get(&name, &[len]).map(Some)
                } else {
                    Ok(None)
                }
            };
            blocks.push(Block {
                attention,
                attn_norm: get(&n[0].1, &[c])?,
                q_norm,
                k_norm,
                post_attn_norm,
                post_mlp_norm,
                q_proj: proj(&n[1].1, &[h * d, c])?,
                k_proj: proj(&n[2].1, &[kv * d, c])?,
                v_proj: proj(&n[3].1, &[kv * d, c])?,
                q_bias: bias("q_proj", h * d)?,
                k_bias: bias("k_proj", kv * d)?,
                v_bias: bias("v_proj", kv * d)?,
                o_proj: proj(&n[4].1, &[c, h * d])?,
                mlp_norm: get(&n[5].1, &[c])?,
                gate_proj: proj(&n[6].1, &[i, c])?,
                up_proj: proj(&n[7].1, &[i, c])?,
                down_proj: proj(&n[8].1, &[c, i])?,
            });
        }
        let embed = match weight("model.embed_tokens.weight", &[v, c])? {
            Weight::Plain(t) => Embedding::Plain(t),
            Weight::Quant(m) => Embedding::Quant(m),
        };
        let lm_head = if cfg.tie_word_embeddings { None } else { Some(proj("lm_head.weight", &[v, c])?) };
        // A quantised head runs its kernel from the start, as the projections do.
        let lm_head_packed = match (&lm_head, &embed) {
            (Some(Proj::Packed { packed, plain: None }), _) => Some(packed.clone()),
            (None, Embedding::Quant(m)) => Some(Arc::new(PackedWeight::quantized(m.clone()))),
            _ => None,
        };
        let norm = get("model.norm.weight", &[c])?;
        let dtype = norm.dtype();
        let rope = RopeTables::new(&cfg, &device, dtype)?;
        let sliding = layer_attention.into_iter().find(|a| a.window.is_some() || a.local_rope);
        Ok(Self { cfg, family, sliding, embed, blocks, norm, lm_head, lm_head_packed, rope })
    }

    /// From now on, runs every projection and the output head through a packed-weight kernel
    /// (`distill_kernels::packed`) at `precision`. Returns false, changing nothing, where that
    /// kernel cannot run: no AVX-512 (AVX-512 BF16 for bf16), not on the CPU, not f32.
    /// - [`Precision::F32`]: the same arithmetic as the plain path, up to the order of the sums,
    ///   with no weight repacked per call (docs/performance.md has the measured figures).
    /// - [`Precision::Bf16`]: weights and activations rounded to bf16, sums in f32: half the
    ///   weight bytes read per product, so faster where memory bandwidth bounds the matmuls.
    ///
    /// For inference only (the teacher's scoring and generation, serving): `backward` through the
    /// packed weights is an error. Memory: an f32 packing replaces the block projections' plain
    /// weights (`named_parameters` unpacks them); a bf16 packing takes another 2 bytes per weight
    /// beside them. The output head's packed copy is extra in both (a tied head's plain weight is
    /// the embedding, which stays). Switching precision repacks.
    pub fn use_packed_matmuls(&mut self, precision: Precision) -> Result<bool> {
        if !(precision.available() && self.device().is_cpu() && self.dtype() == DType::F32) {
            return Ok(false);
        }
        for proj in self.blocks.iter_mut().flat_map(Block::projections_mut) {
            proj.pack(precision)?;
        }
        // A file's quantised head stays as it is.
        let head_from_file = match (&self.lm_head, &self.embed) {
            (Some(head), _) => head.is_file_blocks(),
            (None, embed) => matches!(embed, Embedding::Quant(_)),
        };
        if !head_from_file {
            self.lm_head_packed = Some(pack_weight(&self.lm_head_weight(), precision)?);
        }
        Ok(true)
    }

    /// Turns a GGUF file's quantised weights (projections, output head, embedding) into plain f32
    /// tensors of the same values, for the f32 or bf16 path (4 bytes per weight). Returns whether
    /// there were any.
    pub fn dequantize(&mut self) -> bool {
        let device = self.device().clone();
        let mut any = false;
        for proj in self.blocks.iter_mut().flat_map(Block::projections_mut) {
            if proj.is_file_blocks() {
                *proj = Proj::Plain(proj.tensor(&device));
                any = true;
            }
        }
        if let Some(head) = self.lm_head.as_mut().filter(|h| h.is_file_blocks()) {
            *head = Proj::Plain(head.tensor(&device));
            any = true;
        }
        if let Embedding::Quant(_) = self.embed {
            self.embed = Embedding::Plain(self.embedding());
            any = true;
        }
        if any {
            self.lm_head_packed = None;
        }
        any
    }

    /// The precision of the packed matmuls, once [`Self::use_packed_matmuls`] is on.
    pub fn packed_matmuls(&self) -> Option<Precision> {
        self.lm_head_packed.as_ref().map(|w| w.precision())
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    pub fn device(&self) -> &Device {
        self.norm.device()
    }

    pub fn dtype(&self) -> DType {
        self.norm.dtype()
    }

    /// The embedding (V, C) as a tensor: a quantised one as the values the kernel multiplies.
    fn embedding(&self) -> Tensor {
        match &self.embed {
            Embedding::Plain(t) => t.clone(),
            Embedding::Quant(m) => {
                Weight::Quant(m.clone()).tensor(self.device()).expect("a V × C buffer makes a (V, C) tensor")
            }
        }
    }

    /// All parameters under their HF names (a tied head appears once, as the embedding).
    pub fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![("model.embed_tokens.weight".to_string(), self.embedding())];
        let device = self.device();
        for (layer, b) in self.blocks.iter().enumerate() {
            let n = block_names(layer, &self.family);
            let tensors = [
                b.attn_norm.clone(),
                b.q_proj.tensor(device),
                b.k_proj.tensor(device),
                b.v_proj.tensor(device),
                b.o_proj.tensor(device),
                b.mlp_norm.clone(),
                b.gate_proj.tensor(device),
                b.up_proj.tensor(device),
                b.down_proj.tensor(device),
            ];
            for ((_, name), t) in n.into_iter().zip(tensors) {
                out.push((name, t));
            }
            for (proj, bias) in [("q_proj", &b.q_bias), ("k_proj", &b.k_bias), ("v_proj", &b.v_bias)] {
                if let Some(t) = bias {
                    out.push((format!("model.layers.{layer}.self_attn.{proj}.bias"), t.clone()));
                }
            }
            let extra = [&b.q_norm, &b.k_norm, &b.post_attn_norm, &b.post_mlp_norm].into_iter().flatten();
            for ((name, _), t) in extra_norm_names(layer, &self.family).into_iter().zip(extra) {
                out.push((name, t.clone()));
            }
        }
        out.push(("model.norm.weight".to_string(), self.norm.clone()));
        if let Some(head) = &self.lm_head {
            out.push(("lm_head.weight".to_string(), head.tensor(device)));
        }
        out
    }

    /// The output projection (V, C): the embedding matrix when tied (the same tensor, so a
    /// student's gradient reaches it).
    pub fn lm_head_weight(&self) -> Tensor {
        match &self.lm_head {
            Some(head) => head.tensor(self.device()),
            None => self.embedding(),
        }
    }

    /// Logits for every position. `ids`: (B, T) u32 → (B, T, V).
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let hidden = self.forward_hidden(ids)?; // (B, T, C)
        self.logits(&hidden) // (B, T, V)
    }

    /// The output head on final-norm hidden states: (…, C) → (…, V).
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        Ok(match &self.lm_head_packed {
            Some(packed) => ops::linear_packed(hidden, packed, None)?,
            None => ops::linear(hidden, &self.lm_head_weight(), None)?,
        })
    }

    /// Final-norm hidden states for every position, for callers that apply the head themselves
    /// (chunked over the vocabulary). `ids`: (B, T) → (B, T, C).
    pub fn forward_hidden(&self, ids: &Tensor) -> Result<Tensor> {
        let (_b, t) = ids.dims2()?;
        self.check_context(t)?;
        let frame = Frame::causal(&self.rope, self.sliding, t, self.dtype())?;
        let mut x = self.embed(ids)?; // (B, T, C)
        for block in &self.blocks {
            x = self.block_forward(block, &x, &frame, None, None)?;
        }
        self.rms_norm(&x, &self.norm)
    }

    /// Decodes `ids` (B, T_new) after what `cache` holds and returns the logits of the last new
    /// position (B, V). Rows are left-padded as the cache says; padding is never attended to.
    pub fn step(&self, ids: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        if b != cache.batch_size() {
            return Err(Error::Input(format!(
                "step got a batch of {b} rows, the cache was made for {}",
                cache.batch_size()
            )));
        }
        let past = cache.len;
        self.check_context(past + t)?;
        let frame = Frame::step(&self.rope, self.sliding, &cache.left_pad, past, t, self.dtype())?;
        let mut x = self.embed(ids)?; // (B, T, C)
        for (layer, block) in self.blocks.iter().enumerate() {
            x = self.block_forward(block, &x, &frame, Some(&mut cache.layers[layer]), None)?;
        }
        cache.len += t;
        let last = x.narrow(1, t - 1, 1)?; // (B, 1, C)
        let last = self.rms_norm(&last, &self.norm)?;
        Ok(self.logits(&last)?.squeeze(1)?) // (B, V)
    }

    /// Final-norm hidden states of packed rows (B, T) → (B, T, C): each row holds several
    /// sequences one after another. `position_ids` restart at 0 for each sequence and
    /// `segment_ids` tell them apart; attention never crosses a segment. Both are (B·T).
    pub fn forward_packed_hidden(&self, ids: &Tensor, position_ids: &[u32], segment_ids: &[u32]) -> Result<Tensor> {
        self.packed_hidden(ids, position_ids, segment_ids, None)
    }

    /// [`Self::forward_packed_hidden`] that also adds each layer's activation energy (sums of
    /// squares over the non-padding positions) to `probes`, one per layer: what width pruning
    /// ranks MLP channels and attention heads by.
    pub fn probe_activations(
        &self,
        ids: &Tensor,
        position_ids: &[u32],
        segment_ids: &[u32],
        probes: &mut [ActivationProbe],
    ) -> Result<()> {
        if probes.len() != self.blocks.len() {
            return Err(Error::Input(format!("{} probes for {} layers", probes.len(), self.blocks.len())));
        }
        self.packed_hidden(ids, position_ids, segment_ids, Some(probes)).map(|_| ())
    }

    fn packed_hidden(
        &self,
        ids: &Tensor,
        position_ids: &[u32],
        segment_ids: &[u32],
        mut probes: Option<&mut [ActivationProbe]>,
    ) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        if position_ids.len() != b * t || segment_ids.len() != b * t {
            return Err(Error::Input(format!(
                "packed batch of {b}×{t} tokens got {} positions and {} segment ids",
                position_ids.len(),
                segment_ids.len()
            )));
        }
        if let Some(&p) = position_ids.iter().max().filter(|&&p| p as usize >= self.cfg.max_position_embeddings) {
            return Err(Error::Input(format!(
                "position {p} exceeds the model's context of {}",
                self.cfg.max_position_embeddings
            )));
        }
        let frame = Frame::packed(&self.rope, self.sliding, (b, t), position_ids, segment_ids, self.dtype())?;
        let valid: Vec<f32> = segment_ids.iter().map(|&s| if s > 0 { 1.0 } else { 0.0 }).collect();
        let valid = Tensor::from_vec(valid, (b, t), self.device())?.to_dtype(self.dtype())?;
        let mut x = self.embed(ids)?; // (B, T, C)
        for (i, block) in self.blocks.iter().enumerate() {
            let probe = probes.as_deref_mut().map(|p| (&mut p[i], &valid));
            let out = self.block_forward(block, &x, &frame, None, probe)?;
            if let Some(p) = probes.as_deref_mut() {
                p[i].turn += turn(&x, &out, &valid)?;
            }
            x = out;
        }
        self.rms_norm(&x, &self.norm)
    }

    /// RMSNorm with this family's weights: `w`, or Gemma's `1 + w`.
    fn rms_norm(&self, x: &Tensor, weight: &Tensor) -> Result<Tensor> {
        let eps = self.cfg.rms_norm_eps;
        Ok(match self.family.norm_plus_one {
            true => ops::rms_norm(x, &(weight + 1.0)?, eps)?,
            false => ops::rms_norm(x, weight, eps)?,
        })
    }

    fn check_context(&self, len: usize) -> Result<()> {
        if len > self.cfg.max_position_embeddings {
            return Err(Error::Input(format!(
                "sequence of {len} tokens exceeds the model's context of {} (max_position_embeddings)",
                self.cfg.max_position_embeddings
            )));
        }
        Ok(())
    }

    fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let flat = ids.flatten_all()?;
        let max_id = flat.max(0)?.to_scalar::<u32>()? as usize;
        if max_id >= self.cfg.vocab_size {
            return Err(Error::Input(format!(
                "token id {max_id} is outside the model's vocabulary of {}",
                self.cfg.vocab_size
            )));
        }
        let c = self.cfg.hidden_size;
        let x = match &self.embed {
            Embedding::Plain(table) => table.index_select(&flat, 0)?.reshape((b, t, c))?, // (B, T, C)
            Embedding::Quant(m) => {
                let mut rows = vec![0f32; b * t * c];
                for (row, id) in rows.chunks_exact_mut(c).zip(flat.to_vec1::<u32>()?) {
                    m.row_into(id as usize, row);
                }
                Tensor::from_vec(rows, (b, t, c), self.device())?.to_dtype(self.dtype())?
            }
        };
        Ok(match self.family.embed_scale {
            Some(scale) => (x * scale)?,
            None => x,
        })
    }

    fn block_forward(
        &self,
        block: &Block,
        x: &Tensor,
        frame: &Frame,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
        mut probe: Option<(&mut ActivationProbe, &Tensor)>,
    ) -> Result<Tensor> {
        let h = self.rms_norm(x, &block.attn_norm)?;
        let heads = self.attention(block, &h, frame, cache, probe.as_mut().map(|(p, v)| (&mut **p, *v)))?;
        let x = match &block.post_attn_norm {
            Some(norm) => (x + self.rms_norm(&block.o_proj.apply(&heads, None)?, norm)?)?,
            None => block.o_proj.apply_residual(&heads, x)?,
        };
        let h = self.rms_norm(&x, &block.mlp_norm)?;
        let act = match self.family.activation {
            Activation::Silu => proj::swiglu(&block.gate_proj, &block.up_proj, &h)?, // (B, T, I)
            Activation::GeluTanh => (block.gate_proj.apply(&h, None)?.gelu()? * block.up_proj.apply(&h, None)?)?,
        };
        if let Some((probe, valid)) = probe {
            let energy = act.detach().sqr()?.broadcast_mul(&valid.unsqueeze(2)?)?.sum((0, 1))?; // (I)
            probe.add_mlp(&energy.to_dtype(DType::F32)?.to_vec1::<f32>()?, valid)?;
        }
        Ok(match &block.post_mlp_norm {
            Some(norm) => (&x + self.rms_norm(&block.down_proj.apply(&act, None)?, norm)?)?,
            None => block.down_proj.apply_residual(&act, &x)?, // (B, T, C)
        })
    }

    /// Self-attention's heads, side by side: (B, T, H·D), the output projection's input.
    fn attention(
        &self,
        block: &Block,
        x: &Tensor,
        frame: &Frame,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
        probe: Option<(&mut ActivationProbe, &Tensor)>,
    ) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let attend = frame.for_layer(block.attention);
        let (cos, sin, mask) = (&attend.cos, &attend.sin, &attend.mask);
        let (h, kv, d) = (self.cfg.num_attention_heads, self.cfg.num_kv_heads(), self.cfg.head_dim());
        let projections = [
            (&block.q_proj, block.q_bias.as_ref()),
            (&block.k_proj, block.k_bias.as_ref()),
            (&block.v_proj, block.v_bias.as_ref()),
        ];
        // A projection (B, T, N·D) split into heads, each normed where the family norms q and k,
        // and rotated: (B, N, T, D).
        let heads = |y: &Tensor, norm: Option<&Tensor>| -> Result<Tensor> {
            let y = y.reshape((b, t, y.dim(2)? / d, d))?;
            let y = match norm {
                Some(norm) => self.rms_norm(&y, norm)?,
                None => y,
            };
            Ok(ops::rope_heads(&y, cos, sin)?)
        };
        let (q, k, v) = match proj::project_together(&projections, x)?.as_deref() {
            // A decoding step: the three products in one parallel loop.
            Some([q, k, v]) => (heads(q, block.q_norm.as_ref())?, heads(k, block.k_norm.as_ref())?, v.clone()),
            _ => {
                // A product each; without a norm, a packed weight's kernel rotates as it writes.
                let rotated = |(w, bias): (&Proj, Option<&Tensor>), norm: Option<&Tensor>| -> Result<Tensor> {
                    match norm {
                        None => Ok(proj::rope_heads(w, bias, x, (cos, sin), d)?),
                        Some(norm) => heads(&w.apply(x, bias)?, Some(norm)),
                    }
                };
                let [q, k, (v, v_bias)] = projections;
                (rotated(q, block.q_norm.as_ref())?, rotated(k, block.k_norm.as_ref())?, v.apply(x, v_bias)?)
            }
        };
        let v = v.reshape((b, t, kv, d))?;
        let v = v.transpose(1, 2)?.contiguous()?;
        let (k, v) = match cache {
            Some(slot) => {
                let (k, v) = match slot.take() {
                    Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?),
                    None => (k, v),
                };
                *slot = Some((k.clone(), v.clone()));
                (k, v) // (B, KVH, S, D)
            }
            None => (k, v),
        };
        let out = ops::attention(&q, &k, &v, mask, self.cfg.attention_scale())?; // (B, T, H·D)
        if let Some((probe, valid)) = probe {
            let energy = out.detach().reshape((b, t, h, d))?.sqr()?.sum(3)?; // (B, T, H)
            let energy = energy.broadcast_mul(&valid.unsqueeze(2)?)?.sum((0, 1))?; // (H)
            probe.add_heads(&energy.to_dtype(DType::F32)?.to_vec1::<f32>()?);
        }
        Ok(out)
    }
}

#[cfg(test)]
#[path = "llama_tests.rs"]
mod tests;

/// `Σ (1 − cos(a, b))` over the positions `valid` marks (B, T), for hidden states a, b (B, T, C).
fn turn(a: &Tensor, b: &Tensor, valid: &Tensor) -> Result<f64> {
    let (a, b) = (a.to_dtype(DType::F32)?, b.to_dtype(DType::F32)?);
    let dot = (&a * &b)?.sum(2)?;
    let norms = (a.sqr()?.sum(2)? * b.sqr()?.sum(2)?)?.sqrt()?;
    let cos = (dot / (norms + 1e-12)?)?;
    let turned = ((1.0 - cos)? * valid.to_dtype(DType::F32)?)?;
    Ok(turned.sum_all()?.to_scalar::<f32>()? as f64)
}
