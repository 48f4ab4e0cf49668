//! Loading tiny models written in code: GGUF and HF directories round-trip, and malformed files
//! are errors, never panics.

use candle_core::{Device, Tensor};
use distill_models::fixtures::{tiny_gguf, CHATML_TEMPLATE};
use distill_models::{checkpoint, load, ChatMessage, Llama};

fn logits(model: &Llama) -> Vec<Vec<Vec<f32>>> {
    let ids = Tensor::new(&[[5u32, 70, 100, 3, 250], [9, 8, 7, 6, 5]], &Device::Cpu).unwrap();
    model.forward(&ids).unwrap().to_vec3::<f32>().unwrap()
}

fn assert_close(a: &[Vec<Vec<f32>>], b: &[Vec<Vec<f32>>], tol: f32) {
    let worst =
        a.iter().flatten().flatten().zip(b.iter().flatten().flatten()).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    assert!(worst <= tol, "max abs diff {worst} > {tol}");
}

#[test]
fn gguf_round_trip_restores_hf_layout_weights() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    let (cfg, weights) = tiny_gguf(&path, 1).unwrap();
    let loaded = load(path.to_str().unwrap(), &Device::Cpu).unwrap();
    let got = loaded.model.config();
    assert_eq!(
        (got.vocab_size, got.hidden_size, got.num_hidden_layers, got.num_kv_heads(), got.tie_word_embeddings),
        (cfg.vocab_size, cfg.hidden_size, cfg.num_hidden_layers, cfg.num_kv_heads(), cfg.tie_word_embeddings)
    );
    // The q/k rows were permuted on the way in; the loader must undo it exactly.
    let reference = Llama::from_weights(cfg, &weights).unwrap();
    assert_close(&logits(&loaded.model), &logits(&reference), 0.0);
    assert!(loaded.stop_ids.contains(&2), "EOS / <|im_end|> ends generation");
}

#[test]
fn hf_directory_round_trip_keeps_logits_tokenizer_and_template() {
    let dir = tempfile::tempdir().unwrap();
    let gguf = dir.path().join("tiny.gguf");
    tiny_gguf(&gguf, 2).unwrap();
    let from_gguf = load(gguf.to_str().unwrap(), &Device::Cpu).unwrap();
    let hf = dir.path().join("hf");
    let template = from_gguf.chat_template.as_ref().map(|t| t.source());
    checkpoint::save_hf_dir(&hf, &from_gguf.model, &from_gguf.tokenizer, template).unwrap();
    for file in
        ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json"]
    {
        assert!(hf.join(file).is_file(), "{file} missing");
    }
    let from_hf = load(hf.to_str().unwrap(), &Device::Cpu).unwrap();
    assert_close(&logits(&from_hf.model), &logits(&from_gguf.model), 0.0);
    let text = "<|im_start|>user\nthe hello 123 ünïcode 😀<|im_end|>\n";
    let ids = from_gguf.tokenizer.encode(text, true).unwrap();
    assert_eq!(from_hf.tokenizer.encode(text, true).unwrap(), ids);
    assert_eq!(ids[0], 1, "<|im_start|> is one special token");
    assert_eq!(from_hf.tokenizer.decode(&ids, false).unwrap(), text);
    let messages = [ChatMessage::new("user", "hi")];
    assert_eq!(
        from_hf.chat_template.as_ref().unwrap().render(&messages, true).unwrap(),
        from_gguf.chat_template.as_ref().unwrap().render(&messages, true).unwrap()
    );
    assert_eq!(from_hf.chat_template.as_ref().unwrap().source(), CHATML_TEMPLATE);
    assert_eq!(from_hf.stop_ids, from_gguf.stop_ids);
}

#[test]
fn truncated_gguf_is_an_error_at_every_cut() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    tiny_gguf(&path, 3).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let cut_path = dir.path().join("cut.gguf");
    let mut cuts: Vec<usize> = (0..64).collect();
    cuts.extend((1..200).map(|i| bytes.len() * i / 200));
    cuts.push(bytes.len() - 1);
    for cut in cuts {
        std::fs::write(&cut_path, &bytes[..cut]).unwrap();
        match load(cut_path.to_str().unwrap(), &Device::Cpu) {
            Ok(_) => panic!("a file cut at byte {cut} of {} loaded", bytes.len()),
            Err(e) => {
                let msg = e.to_string();
                assert!(msg.contains("cut.gguf"), "error does not name the file: {msg}");
            }
        }
    }
}

#[test]
fn corrupted_gguf_headers_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    tiny_gguf(&path, 4).unwrap();
    let good = std::fs::read(&path).unwrap();
    let bad_path = dir.path().join("bad.gguf");
    let patches: Vec<(&str, usize, Vec<u8>)> = vec![
        ("magic", 0, b"GGUX".to_vec()),
        ("version", 4, 99u32.to_le_bytes().to_vec()),
        ("tensor count", 8, u64::MAX.to_le_bytes().to_vec()),
        ("metadata count", 16, (u64::MAX / 2).to_le_bytes().to_vec()),
        ("first key length", 24, (1u64 << 40).to_le_bytes().to_vec()),
    ];
    for (what, at, patch) in patches {
        let mut bytes = good.clone();
        bytes[at..at + patch.len()].copy_from_slice(&patch);
        std::fs::write(&bad_path, &bytes).unwrap();
        let err =
            load(bad_path.to_str().unwrap(), &Device::Cpu).err().unwrap_or_else(|| panic!("corrupt {what} loaded"));
        assert!(err.to_string().contains("not a usable GGUF"), "{what}: {err}");
    }
    // Random garbage in the middle of the metadata must not panic either.
    for seed in 0..40usize {
        let mut bytes = good.clone();
        for k in 0..8 {
            let at = 24 + (seed * 7919 + k * 104_729) % (bytes.len() / 4);
            bytes[at] ^= 0xA5;
        }
        std::fs::write(&bad_path, &bytes).unwrap();
        let _ = load(bad_path.to_str().unwrap(), &Device::Cpu);
    }
}

#[test]
fn not_a_model_gives_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.gguf");
    std::fs::write(&text, "hello, I am a text file\n").unwrap();
    let err = load(text.to_str().unwrap(), &Device::Cpu).err().unwrap().to_string();
    assert!(err.contains("not a usable GGUF"), "{err}");
    let empty_dir = dir.path().join("empty");
    std::fs::create_dir(&empty_dir).unwrap();
    let err = load(empty_dir.to_str().unwrap(), &Device::Cpu).err().unwrap().to_string();
    assert!(err.contains("config.json"), "{err}");
    let err = load("./no/such/model.gguf", &Device::Cpu).err().unwrap().to_string();
    assert!(err.contains("neither a file"), "{err}");
    // A training run's directory: the error points at its student.
    let gguf = dir.path().join("tiny.gguf");
    tiny_gguf(&gguf, 5).unwrap();
    let model = load(gguf.to_str().unwrap(), &Device::Cpu).unwrap();
    let run = dir.path().join("run");
    checkpoint::save_hf_dir(&run.join("final"), &model.model, &model.tokenizer, None).unwrap();
    let err = load(run.to_str().unwrap(), &Device::Cpu).err().unwrap().to_string();
    assert!(err.contains("its student is") && err.contains("final"), "{err}");
    assert_eq!(err.matches("No such file").count(), 0, "{err}");
}

#[test]
fn mismatched_tokenizer_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let gguf = dir.path().join("tiny.gguf");
    tiny_gguf(&gguf, 5).unwrap();
    let model = load(gguf.to_str().unwrap(), &Device::Cpu).unwrap();
    let hf = dir.path().join("hf");
    checkpoint::save_hf_dir(&hf, &model.model, &model.tokenizer, None).unwrap();
    // Shrink the model's vocabulary below the tokenizer's.
    let cfg_path = hf.join("config.json");
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["vocab_size"] = serde_json::json!(100);
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let err = load(hf.to_str().unwrap(), &Device::Cpu).err().unwrap().to_string();
    assert!(err.contains("tokenizer has") && err.contains("100"), "{err}");
}

#[test]
fn token_bytes_and_id_for_bytes_are_inverse_over_the_whole_vocabulary() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    tiny_gguf(&path, 5).unwrap();
    let model = load(path.to_str().unwrap(), &Device::Cpu).unwrap();
    let tok = &model.tokenizer;
    let mut checked = 0;
    for id in 0..tok.vocab_size() as u32 {
        let bytes = tok.token_bytes(id);
        if tok.id_to_token(id).is_some_and(|t| t.starts_with("<|")) {
            continue; // special tokens are not byte-level spellings
        }
        assert_eq!(tok.id_for_bytes(&bytes), Some(id), "token {id} = {bytes:?}");
        checked += 1;
    }
    assert!(checked >= 256, "every byte has a token: {checked}");
    // A lone UTF-8 lead byte is a token of its own and survives the round trip.
    assert!(tok.id_for_bytes(&[0xE2]).is_some());
}
