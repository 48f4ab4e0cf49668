//! `distill export`: GGUF and HF outputs of a model load back and generate the same greedy text;
//! bad arguments are refused without touching existing files.

mod common;
use common::{distill, text};

use distill_models::fixtures::tiny_gguf;

fn greedy(model: &str) -> String {
    let out = distill(&["generate", "--model", model, "--max-tokens", "12", "--json", "the hello"]);
    assert!(out.status.success(), "{model}: {}", text(&out.stderr));
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    line["text"].as_str().unwrap().to_string()
}

#[test]
fn exports_round_trip_and_bad_arguments_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("teacher.gguf");
    tiny_gguf(&model, 12).unwrap();
    let m = model.to_str().unwrap();
    let expected = greedy(m);

    let f32_out = dir.path().join("student.f32.gguf");
    let out = distill(&["export", m, "-o", f32_out.to_str().unwrap(), "--type", "f32"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("tensors"), "{}", text(&out.stderr));
    assert_eq!(greedy(f32_out.to_str().unwrap()), expected);

    let hf = dir.path().join("hf");
    let out = distill(&["export", f32_out.to_str().unwrap(), "-o", hf.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for file in ["config.json", "model.safetensors", "tokenizer.json", "generation_config.json"] {
        assert!(hf.join(file).is_file(), "{file} missing");
    }
    assert_eq!(greedy(hf.to_str().unwrap()), expected);

    // Existing output: refused, file untouched; unknown type: refused.
    let before = std::fs::read(&f32_out).unwrap();
    let out = distill(&["export", m, "-o", f32_out.to_str().unwrap(), "--type", "q8_0"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("--force"), "{}", text(&out.stderr));
    assert_eq!(std::fs::read(&f32_out).unwrap(), before);
    let out = distill(&["export", m, "-o", dir.path().join("x.gguf").to_str().unwrap(), "--type", "q3_k"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("unknown GGUF --type `q3_k`"), "{}", text(&out.stderr));
    let out = distill(&["export", m, "-o", dir.path().join("hf-q8").to_str().unwrap(), "--type", "q8_0"]);
    assert!(!out.status.success() && text(&out.stderr).contains("for .gguf files"), "{}", text(&out.stderr));
    assert!(!dir.path().join("hf-q8").exists());

    // The model may be named with -m/--model, as `distill generate` takes it.
    let flagged = dir.path().join("flagged.gguf");
    let out = distill(&["export", "-m", m, "-o", flagged.to_str().unwrap()]);
    assert!(out.status.success() && flagged.is_file(), "{}", text(&out.stderr));

    // An output that is neither a .gguf file nor a directory name: refused, nothing written.
    let odd = dir.path().join("student.bin");
    let out = distill(&["export", m, "-o", odd.to_str().unwrap()]);
    assert!(!out.status.success() && text(&out.stderr).contains("name the file *.gguf"), "{}", text(&out.stderr));
    assert!(!odd.exists());

    let out = distill(&["export", m, "-o", f32_out.to_str().unwrap(), "--type", "q8_0", "--force"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(std::fs::metadata(&f32_out).unwrap().len() < before.len() as u64);
}
