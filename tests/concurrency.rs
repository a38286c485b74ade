//! The library's promise to desktop apps (issue 16, item 5): two quantize
//! jobs and an eval's forward at once, in one process, on one GPU context,
//! each ending with the result it has alone.

mod common;

use common::gptq_model::tiny_model;
use llmq_gpu::backend::GpuBackend;
use llmq_gpu::model::forward::{Forward, GpuForward, LlamaWeights};
use llmq_gpu::pipeline::calib::CalibConfig;
use llmq_gpu::pipeline::gptq::GptqSettings;
use llmq_gpu::{
    quantize_model_with, CancelToken, Granularity, ModelView, QuantScheme, QuantizeConfig,
};
use std::path::Path;

/// The weights files of an llmq folder, by name (the metadata holds timings).
fn weights(out: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no weights in {}", out.display());
    v
}

#[test]
fn two_quantize_jobs_and_a_forward_share_one_gpu_context() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = common::rng("two_quantize_jobs_and_a_forward_share_one_gpu_context");
    let model = tiny_model(dir.path(), &mut rng, &|_, _| {});
    let ctx = common::gpu();
    let quantize = |out: &Path, bits: u32| {
        let settings = GptqSettings::new(CalibConfig {
            samples: 4,
            len: 16,
            seed: 1,
            ..CalibConfig::new(dir.path().join("calib.txt"))
        });
        let scheme = QuantScheme::new(bits, false, Granularity::Group(32)).unwrap();
        let config = QuantizeConfig::new(&model, out, scheme).gptq(settings);
        let backend = GpuBackend::new(ctx.clone());
        quantize_model_with(&backend, &config, &mut |_| {}, &CancelToken::default()).unwrap();
        weights(out)
    };
    let tokens: Vec<u32> = (0..48).map(|i| 2 + (i * 7) % 60).collect();
    let logits = || {
        let view = ModelView::open(&model).unwrap();
        let forward = GpuForward::new(ctx.clone(), LlamaWeights::load(&view).unwrap()).unwrap();
        (0..3)
            .map(|_| forward.logits(&tokens).unwrap())
            .collect::<Vec<_>>()
    };
    let alone = (
        quantize(&dir.path().join("alone-4"), 4),
        quantize(&dir.path().join("alone-3"), 3),
        logits(),
    );
    let together = std::thread::scope(|s| {
        let a = s.spawn(|| quantize(&dir.path().join("together-4"), 4));
        let b = s.spawn(|| quantize(&dir.path().join("together-3"), 3));
        let c = s.spawn(logits);
        (a.join().unwrap(), b.join().unwrap(), c.join().unwrap())
    });
    assert!(
        alone.0 == together.0,
        "the W4 job's weights differ when run alongside others"
    );
    assert!(
        alone.1 == together.1,
        "the W3 job's weights differ when run alongside others"
    );
    assert!(
        alone.2 == together.2,
        "the forward's logits differ when run alongside others"
    );
    assert!(
        alone.2.iter().all(|l| *l == alone.2[0]),
        "the forward is not deterministic"
    );
}
