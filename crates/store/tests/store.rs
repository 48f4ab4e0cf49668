//! The dataset store on synthetic teacher signal: round trips, resumption, refusals, packing.

use distill_store::quant::{kl_with_tail, Quantization};
use distill_store::shard::{read_shard, write_shard, ShardCoding};
use distill_store::{Dataset, DatasetSpec, DatasetWriter, PackOptions, Packer, Sequence};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const K: usize = 8;
const VOCAB: u32 = 500;

/// A sequence whose top-K looks like a teacher's: descending log-probs, a tail, distinct ids.
fn sequence(rng: &mut StdRng, prompt_index: u32, sample: u16) -> Sequence {
    let prompt_len = rng.gen_range(1..6);
    let completion = rng.gen_range(1..12);
    let token_ids: Vec<u32> = (0..prompt_len + completion).map(|_| rng.gen_range(0..VOCAB)).collect();
    let mut topk_ids = Vec::new();
    let mut topk_logprobs = Vec::new();
    let mut tail_logprobs = Vec::new();
    for _ in 0..completion {
        let mut ids: Vec<u32> = Vec::new();
        while ids.len() < K {
            let id = rng.gen_range(0..VOCAB);
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        let mut raw: Vec<f64> = (0..K).map(|_| rng.gen_range(-12.0..0.0)).collect();
        raw.sort_by(|a, b| b.total_cmp(a));
        let tail_mass = rng.gen_range(0.001..0.2);
        let total: f64 = raw.iter().map(|l| l.exp()).sum::<f64>() / (1.0 - tail_mass);
        topk_ids.extend(ids);
        topk_logprobs.extend(raw.iter().map(|l| (l - total.ln()) as f32));
        tail_logprobs.push(tail_mass.ln() as f32);
    }
    Sequence {
        prompt_index,
        prompt_id: format!("p{prompt_index}"),
        sample,
        token_ids,
        prompt_len: prompt_len as u32,
        topk_ids,
        topk_logprobs,
        tail_logprobs,
    }
}

fn spec(prompts: usize, per_shard: usize) -> DatasetSpec {
    DatasetSpec {
        teacher: "teacher.gguf".into(),
        teacher_hash: "aa".repeat(32),
        tokenizer_hash: "bb".repeat(32),
        tokenizer_vocab: VOCAB as usize,
        model_vocab: VOCAB as usize,
        k: K,
        logprob_temperature: 1.0,
        sampling: serde_json::json!({"temperature": 0.0}),
        completions_per_prompt: 1,
        chat: true,
        prompts_hash: "cc".repeat(32),
        prompts,
        prompts_per_shard: per_shard,
        quantization: Quantization::default(),
        teacher_matmuls: distill_kernels::packed::Precision::F32,
        system_messages: None,
    }
}

fn coding(quantization: Quantization) -> ShardCoding {
    ShardCoding { k: K, vocab: VOCAB as usize, quantization }
}

#[test]
fn shard_round_trip_keeps_ids_and_bounds_the_quantisation_kl() {
    for q in [Quantization::default(), Quantization::plain()] {
        shard_round_trip(q);
    }
}

fn shard_round_trip(q: Quantization) {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(1);
    let seqs: Vec<Sequence> = (0..20).map(|i| sequence(&mut rng, i, 0)).collect();
    let path = dir.path().join("s.parquet");
    let stats = write_shard(&path, &seqs, &coding(q)).unwrap();
    assert!(stats.kl_max < 1e-3, "{:?}: max KL {}", q.scheme, stats.kl_max);
    let back = read_shard(&path, &coding(q)).unwrap();
    assert_eq!(back.len(), seqs.len());
    for (a, b) in seqs.iter().zip(&back) {
        assert_eq!(
            (&a.token_ids, &a.topk_ids, a.prompt_len, &a.prompt_id),
            (&b.token_ids, &b.topk_ids, b.prompt_len, &b.prompt_id)
        );
        for pos in 0..a.tail_logprobs.len() {
            let kl = kl_with_tail(
                &a.topk_logprobs[pos * K..(pos + 1) * K],
                a.tail_logprobs[pos],
                &b.topk_logprobs[pos * K..(pos + 1) * K],
                b.tail_logprobs[pos],
            );
            assert!(kl < 1e-3, "position {pos}: KL {kl}");
        }
    }
}

#[test]
fn damaged_coded_bytes_are_reported_not_decoded_into_garbage() {
    use arrow_array::{Array, BinaryArray, RecordBatch};
    let dir = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(5);
    let seqs: Vec<Sequence> = (0..6).map(|i| sequence(&mut rng, i, 0)).collect();
    let path = dir.path().join("s.parquet");
    write_shard(&path, &seqs, &coding(Quantization::default())).unwrap();
    // Rewrite the shard with the last row's coded bytes cut short.
    let file = std::fs::File::open(&path).unwrap();
    let batch: RecordBatch = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    let coded = batch.column_by_name("topk_coded").unwrap().as_any().downcast_ref::<BinaryArray>().unwrap();
    let last = coded.len() - 1;
    let cut: Vec<&[u8]> = (0..coded.len())
        .map(|i| if i == last { &coded.value(i)[..coded.value(i).len() / 2] } else { coded.value(i) })
        .collect();
    let mut columns = batch.columns().to_vec();
    let index = batch.schema().index_of("topk_coded").unwrap();
    columns[index] = std::sync::Arc::new(BinaryArray::from_iter_values(cut));
    let damaged = RecordBatch::try_new(batch.schema(), columns).unwrap();
    let mut writer =
        parquet::arrow::ArrowWriter::try_new(std::fs::File::create(&path).unwrap(), batch.schema(), None).unwrap();
    writer.write(&damaged).unwrap();
    writer.close().unwrap();
    let err = read_shard(&path, &coding(Quantization::default())).unwrap_err().to_string();
    assert!(err.contains(&format!("row {last}")) && err.contains("truncated or damaged"), "{err}");
}

#[test]
fn a_plain_dataset_reads_back_through_the_dataset_reader() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(6);
    let mut plain = spec(4, 2);
    plain.quantization = Quantization::plain();
    let mut w = DatasetWriter::open(dir.path(), plain, "p.jsonl").unwrap();
    let mut written = Vec::new();
    while let Some(range) = w.next_shard() {
        let seqs: Vec<Sequence> = range.clone().map(|i| sequence(&mut rng, i as u32, 0)).collect();
        w.write_shard(range, &seqs).unwrap();
        written.extend(seqs);
    }
    assert_eq!(w.manifest().format_version, 1, "the plain layout is format version 1");
    let ds = Dataset::open(dir.path()).unwrap();
    let back: Vec<Sequence> = ds.sequences().map(|s| s.unwrap()).collect();
    assert_eq!(
        back.iter().map(|s| &s.topk_ids).collect::<Vec<_>>(),
        written.iter().map(|s| &s.topk_ids).collect::<Vec<_>>()
    );
}

#[test]
fn resuming_continues_after_the_last_listed_shard_and_drops_partial_files() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(2);
    {
        let mut w = DatasetWriter::open(dir.path(), spec(10, 4), "p.jsonl").unwrap();
        let range = w.next_shard().unwrap();
        assert_eq!(range, 0..4);
        let seqs: Vec<Sequence> = range.clone().map(|i| sequence(&mut rng, i as u32, 0)).collect();
        w.write_shard(range, &seqs).unwrap();
    }
    // What a crash leaves behind: a renamed but unlisted shard and a temp file.
    std::fs::write(dir.path().join("shard-00001.parquet"), b"half").unwrap();
    std::fs::write(dir.path().join("shard-00001.parquet.tmp"), b"half").unwrap();
    let mut w = DatasetWriter::open(dir.path(), spec(10, 4), "p.jsonl").unwrap();
    assert!(!dir.path().join("shard-00001.parquet").exists());
    assert!(!dir.path().join("shard-00001.parquet.tmp").exists());
    assert_eq!(w.next_shard(), Some(4..8));
    let err = w.write_shard(0..4, &[]).unwrap_err().to_string();
    assert!(err.contains("out of order"), "{err}");
    while let Some(range) = w.next_shard() {
        let seqs: Vec<Sequence> = range.clone().map(|i| sequence(&mut rng, i as u32, 0)).collect();
        w.write_shard(range, &seqs).unwrap();
    }
    assert!(w.manifest().complete);
    let ds = Dataset::open(dir.path()).unwrap();
    let mut seen: Vec<u32> = ds.sequences().map(|s| s.unwrap().prompt_index).collect();
    seen.sort_unstable();
    assert_eq!(seen, (0..10).collect::<Vec<_>>());
}

#[test]
fn a_run_with_other_settings_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    DatasetWriter::open(dir.path(), spec(10, 4), "p.jsonl").unwrap();
    let mut other = spec(10, 4);
    other.k = 16;
    other.teacher_hash = "dd".repeat(32);
    let err = DatasetWriter::open(dir.path(), other, "p.jsonl").err().unwrap().to_string();
    assert!(err.contains("k: dataset has 8, this run has 16"), "{err}");
    assert!(err.contains("teacher"), "{err}");
    let mut other = spec(10, 4);
    other.system_messages =
        Some(distill_store::SystemMessagesSpec { messages: 16, sha256: "ee".repeat(32), share: 0.5 });
    let err = DatasetWriter::open(dir.path(), other, "p.jsonl").err().unwrap().to_string();
    assert!(
        err.contains("system messages: dataset has none, this run has 16 messages (eeeeeeeeeeee) for a share of 0.5"),
        "{err}"
    );
    let busy = tempfile::tempdir().unwrap();
    std::fs::write(busy.path().join("notes.txt"), "mine").unwrap();
    let err = DatasetWriter::open(busy.path(), spec(10, 4), "p.jsonl").err().unwrap().to_string();
    assert!(err.contains("not empty"), "{err}");
    assert!(busy.path().join("notes.txt").exists(), "nothing of the user's is deleted");
}

#[test]
fn student_with_another_tokenizer_or_padded_vocab_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = spec(1, 1);
    s.model_vocab = 151_936;
    DatasetWriter::open(dir.path(), s.clone(), "p.jsonl").unwrap();
    let ds = Dataset::open(dir.path()).unwrap();
    ds.check_student(&s.tokenizer_hash, s.tokenizer_vocab, 151_936).unwrap();
    let err = ds.check_student(&s.tokenizer_hash, s.tokenizer_vocab, 152_064).unwrap_err().to_string();
    assert!(err.contains("152064") && err.contains("151936"), "{err}");
    let err = ds.check_student(&"ee".repeat(32), 32_000, 151_936).unwrap_err().to_string();
    assert!(err.contains("another teacher"), "{err}");
    let missing = tempfile::tempdir().unwrap();
    let err = Dataset::open(missing.path()).err().unwrap().to_string();
    assert!(err.contains("not a distill dataset"), "{err}");
}

#[test]
fn packing_aligns_targets_masks_every_completion_token_and_is_seeded() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(3);
    let mut w = DatasetWriter::open(dir.path(), spec(30, 8), "p.jsonl").unwrap();
    let mut all = Vec::new();
    while let Some(range) = w.next_shard() {
        let seqs: Vec<Sequence> = range.clone().map(|i| sequence(&mut rng, i as u32, 0)).collect();
        all.extend(seqs.clone());
        w.write_shard(range, &seqs).unwrap();
    }
    let ds = Dataset::open(dir.path()).unwrap();
    let options = PackOptions { seq_len: 24, batch_size: 3, seed: 9, pad_id: 0 };
    let epoch = |options: &PackOptions| {
        let mut packer = Packer::new(&ds, options.clone());
        let mut batches = Vec::new();
        while let Some(b) = packer.next_batch().unwrap() {
            batches.push(b);
        }
        batches
    };
    let batches = epoch(&options);
    let masked: usize = batches.iter().map(|b| b.target_tokens()).sum();
    let completion: usize = all.iter().map(|s| s.completion_len()).sum();
    assert_eq!(masked, completion, "every completion token is a target exactly once");
    let by_id: std::collections::HashMap<String, &Sequence> = all.iter().map(|s| (s.prompt_id.clone(), s)).collect();
    for b in &batches {
        for row in 0..b.batch_size {
            for pos in 0..b.seq_len {
                let at = row * b.seq_len + pos;
                if b.loss_mask[at] == 0.0 {
                    continue;
                }
                // The segment's first position holds token 0 of some sequence; find it by content.
                let seg = b.segment_ids[at];
                let start = (0..=pos).rev().take_while(|&p| b.segment_ids[row * b.seq_len + p] == seg).last().unwrap();
                let len = (start..b.seq_len).take_while(|&p| b.segment_ids[row * b.seq_len + p] == seg).count();
                let tokens = &b.input_ids[row * b.seq_len + start..row * b.seq_len + start + len];
                let seq = by_id.values().find(|s| s.token_ids == tokens).expect("segment is a whole sequence");
                let i = pos - start;
                assert_eq!(b.position_ids[at] as usize, i);
                assert_eq!(b.target_ids[at], seq.token_ids[i + 1]);
                let j = i + 1 - seq.prompt_len as usize;
                assert_eq!(&b.topk_ids[at * K..(at + 1) * K], &seq.topk_ids[j * K..(j + 1) * K]);
            }
        }
    }
    assert_eq!(epoch(&options), batches, "same seed, same batches");
    // Sequences held in memory (rollouts) pack by the same rules, in the order given.
    let in_memory = distill_store::pack_sequences(all.clone(), K, &options).unwrap();
    assert_eq!(in_memory.iter().map(|b| b.target_tokens()).sum::<usize>(), completion);
    assert_eq!(&in_memory[0].input_ids[..all[0].token_ids.len()], &all[0].token_ids[..]);
    let other = epoch(&PackOptions { seed: 10, ..options });
    assert_ne!(
        other.first().unwrap().input_ids,
        batches.first().unwrap().input_ids,
        "another seed shuffles differently"
    );
}
