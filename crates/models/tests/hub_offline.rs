//! A Hub id that is not cached, with the Hub unreachable, is a clear error naming the model.

#[test]
fn uncached_hub_id_offline_explains_what_to_do() {
    let home = tempfile::tempdir().unwrap();
    std::env::set_var("HF_HOME", home.path());
    std::env::set_var("HF_HUB_OFFLINE", "1");
    let err = distill_models::load("HuggingFaceTB/SmolLM2-135M-Instruct", &candle_core::Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("HuggingFaceTB/SmolLM2-135M-Instruct"), "{err}");
    assert!(err.contains("HINT"), "{err}");
}
