//! Rewrites a dataset's shards with another coding and prints the bytes per token of each.
//!
//! `cargo run --release -p distill-store --example recode -- SRC_DIR OUT_DIR [coded|plain]`
//!
//! The source's reconstructed log-probabilities are the input, so the KL printed is against
//! them, not against the teacher's unquantised values (`distill generate` measures that).

use std::path::PathBuf;

use distill_store::quant::Quantization;
use distill_store::shard::{write_shard, ShardCoding};
use distill_store::Dataset;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [src, out, rest @ ..] = args.as_slice() else {
        return Err("usage: recode SRC_DIR OUT_DIR [coded|plain]".into());
    };
    let quantization = match rest.first().map(String::as_str) {
        None | Some("coded") => Quantization::default(),
        Some("plain") => Quantization::plain(),
        Some(other) => return Err(format!("unknown layout {other}").into()),
    };
    let ds = Dataset::open(&PathBuf::from(src))?;
    let mut coding = ShardCoding::of(&ds.manifest().spec);
    coding.quantization = quantization;
    std::fs::create_dir_all(out)?;
    let (mut bytes, mut tokens, mut kl, mut kl_max, mut seconds) = (0u64, 0usize, 0f64, 0f64, 0f64);
    for i in 0..ds.num_shards() {
        let sequences = ds.read_shard(i)?;
        let path = PathBuf::from(out).join(format!("shard-{i:05}.parquet"));
        let started = std::time::Instant::now();
        let stats = write_shard(&path, &sequences, &coding)?;
        let written = started.elapsed().as_secs_f64();
        let started = std::time::Instant::now();
        let back = distill_store::shard::read_shard(&path, &coding)?;
        assert_eq!(back.len(), sequences.len());
        seconds += written + started.elapsed().as_secs_f64();
        bytes += stats.bytes;
        tokens += stats.completion_tokens;
        kl += stats.kl_sum;
        kl_max = kl_max.max(stats.kl_max);
    }
    println!(
        "{:?}: {tokens} tokens, {:.2} bytes/token, KL mean {:.2e} max {:.2e} (against the source), write+read {:.2} s",
        quantization.scheme,
        bytes as f64 / tokens as f64,
        kl / tokens as f64,
        kl_max,
        seconds
    );
    Ok(())
}
