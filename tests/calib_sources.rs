//! Calibration sources (issue 12): several text files split by weight, a
//! folder, and windows sampled from the model itself (`self:N`), each
//! reproducible; and the batched decoder that generates them against the
//! one-sequence decoder.

mod common;

use common::gptq_model::{tiny_model, VOCAB};
use llmq_gpu::backend::CpuBackend;
use llmq_gpu::model::forward::{CpuForward, KvCache};
use llmq_gpu::model::tokenizer::Tokenizer;
use llmq_gpu::pipeline::calib::{load_windows, CalibConfig, CalibSource};
use llmq_gpu::pipeline::gptq::GptqSettings;
use llmq_gpu::{
    quantize_model_with, CancelToken, Granularity, ModelView, QuantScheme, QuantizeConfig,
};
use rand::Rng;
use std::path::Path;

/// Every file of the output folder `dir` but the two that record the run's
/// timings (gptq-report.json, llmq.json), by name, with a hash of its bytes.
fn folder_bytes(dir: &Path) -> Vec<(String, u64)> {
    use std::hash::{Hash, Hasher};
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| !p.ends_with("gptq-report.json") && !p.ends_with("llmq.json"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            let mut h = std::collections::hash_map::DefaultHasher::new();
            std::fs::read(&p).unwrap().hash(&mut h);
            (name, h.finish())
        })
        .collect();
    files.sort();
    files
}

fn quantize(model: &Path, out: &Path, calib: CalibConfig) {
    let scheme = QuantScheme::new(4, true, Granularity::Group(32)).unwrap();
    let config = QuantizeConfig::new(model, out, scheme)
        .gptq(GptqSettings::new(calib))
        .overwrite(true);
    quantize_model_with(&CpuBackend, &config, &mut |_| {}, &CancelToken::default()).unwrap();
}

#[test]
fn batched_decoding_matches_one_sequence_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = common::rng("batched_decoding_matches_one_sequence_at_a_time");
    let model = tiny_model(dir.path(), &mut rng, &|_, _| {});
    let forward = CpuForward::load(&ModelView::open(&model).unwrap()).unwrap();
    let arch = forward.weights.arch.clone();
    let seqs: Vec<Vec<u32>> = (0..3)
        .map(|_| (0..6).map(|_| rng.gen_range(1..VOCAB as u32)).collect())
        .collect();
    let mut caches: Vec<KvCache> = (0..3).map(|_| KvCache::new(&arch, 8)).collect();
    let mut singles: Vec<KvCache> = (0..3).map(|_| KvCache::new(&arch, 8)).collect();
    for pos in 0..6 {
        let tokens: Vec<u32> = seqs.iter().map(|s| s[pos]).collect();
        let batched = forward.feed_batch(&mut caches, &tokens).unwrap();
        for (b, cache) in singles.iter_mut().enumerate() {
            let one = forward.feed(cache, &[tokens[b]]).unwrap();
            let row = &batched[b * arch.vocab_size..][..arch.vocab_size];
            let worst = one
                .iter()
                .zip(row)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(
                worst <= 1e-4,
                "position {pos}, sequence {b}: logits differ by {worst}"
            );
        }
    }
    // Caches at different positions are refused.
    let mut mixed = vec![KvCache::new(&arch, 8), KvCache::new(&arch, 8)];
    forward.feed(&mut mixed[0], &[1]).unwrap();
    assert!(forward.feed_batch(&mut mixed, &[1, 2]).is_err());
}

#[test]
fn self_generated_calibration_is_reproducible_under_a_seed() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = common::rng("self_generated_calibration_is_reproducible");
    // Small embeddings: the tied head of the random model then spreads its
    // probability over many tokens instead of repeating the last one.
    let model = tiny_model(dir.path(), &mut rng, &|name, v| {
        if name.contains("embed") {
            v.iter_mut().for_each(|x| *x *= 0.05);
        }
    });
    let view = ModelView::open(&model).unwrap();
    let tokenizer = Tokenizer::from_model(&view).unwrap();
    let config = |seed| CalibConfig {
        sources: CalibSource::parse("self:3").unwrap(),
        samples: 128, // texts only: no text source here
        len: 16,
        seed,
    };
    let a = load_windows(&config(7), 0, &tokenizer, &view).unwrap();
    let b = load_windows(&config(7), 0, &tokenizer, &view).unwrap();
    let c = load_windows(&config(8), 0, &tokenizer, &view).unwrap();
    assert_eq!(a.samples, 3);
    assert_eq!(a.tokens.len(), 3 * 16);
    assert_eq!(a.tokens, b.tokens, "same seed, same windows");
    assert_ne!(a.tokens, c.tokens, "another seed, other windows");
    for w in a.tokens.chunks(16) {
        assert_eq!(w[0], 1, "windows start at BOS");
        assert!(w.iter().all(|&t| (t as usize) < VOCAB));
    }
    // Sampled at temperature 1, not greedy: the windows are not one text.
    assert_ne!(a.tokens[..16], a.tokens[16..32]);
    // Held-out windows come after, leaving the fitted ones as they were.
    let held = load_windows(&config(7), 2, &tokenizer, &view).unwrap();
    assert_eq!(held.samples, 5);
    assert_eq!(held.tokens[..48], a.tokens[..]);

    // The whole run is reproducible.
    let (out1, out2) = (dir.path().join("q1"), dir.path().join("q2"));
    quantize(&model, &out1, config(7));
    quantize(&model, &out2, config(7));
    assert_eq!(folder_bytes(&out1), folder_bytes(&out2));
}

#[test]
fn multi_file_calibration_is_split_by_weight_and_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = common::rng("multi_file_calibration_is_deterministic");
    let model = tiny_model(dir.path(), &mut rng, &|_, _| {});
    let view = ModelView::open(&model).unwrap();
    let tokenizer = Tokenizer::from_model(&view).unwrap();
    // Two texts over disjoint words, so each window tells its source.
    let texts = dir.path().join("texts");
    std::fs::create_dir(&texts).unwrap();
    let text = |lo: usize, hi: usize, rng: &mut rand::rngs::StdRng| {
        let words: Vec<String> = (0..2000)
            .map(|_| format!("w{}", rng.gen_range(lo..hi)))
            .collect();
        words.join(" ")
    };
    std::fs::write(texts.join("a.txt"), text(2, 30, &mut rng)).unwrap();
    std::fs::write(texts.join("b.txt"), text(30, VOCAB, &mut rng)).unwrap();
    let mut sources = CalibSource::parse(&format!("{}@1", texts.join("a.txt").display())).unwrap();
    sources.extend(CalibSource::parse(&format!("{}@3", texts.join("b.txt").display())).unwrap());
    let config = CalibConfig {
        sources,
        samples: 8,
        len: 16,
        seed: 1,
    };
    let w = load_windows(&config, 4, &tokenizer, &view).unwrap();
    assert_eq!(w.samples, 12);
    let from_a = |win: &[u32]| win[1..].iter().all(|&t| t < 30);
    let source_of: Vec<bool> = w.tokens.chunks(16).map(from_a).collect();
    // Fitted: 2 from a (weight 1), 6 from b (weight 3); held out: 1 and 3.
    assert_eq!(
        source_of,
        [vec![true; 2], vec![false; 6], vec![true; 1], vec![false; 3]].concat()
    );
    assert_eq!(
        load_windows(&config, 4, &tokenizer, &view).unwrap().tokens,
        w.tokens
    );
    // A folder is its files with the weight shared: the same mix at 1:1.
    let folder = CalibConfig {
        sources: CalibSource::parse(&texts.to_string_lossy()).unwrap(),
        ..config.clone()
    };
    let f = load_windows(&folder, 0, &tokenizer, &view).unwrap();
    let split: Vec<bool> = f.tokens.chunks(16).map(from_a).collect();
    assert_eq!(split, [vec![true; 4], vec![false; 4]].concat());

    let (out1, out2) = (dir.path().join("q1"), dir.path().join("q2"));
    quantize(&model, &out1, config.clone());
    quantize(&model, &out2, config);
    assert_eq!(folder_bytes(&out1), folder_bytes(&out2));
}
