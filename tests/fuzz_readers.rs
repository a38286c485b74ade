//! Fuzzes every reader of untrusted bytes (GGUF, safetensors, shard index,
//! `config.json`, `tokenizer.json`, llmq folders) with structure-aware
//! mutations of real and hand-built seeds: no panic, no hang, no
//! allocation beyond what the input justifies. 10⁴ inputs per reader here;
//! `scripts/fuzz.sh` runs 10⁶ (`LLMQ_FUZZ_EXECS`), `LLMQ_FUZZ_SEED`
//! replays a run. Findings are kept under the cargo target folder.

mod common;
mod fuzz;

use fuzz::gguf_seed::{smollm2_small, with_sentencepiece, Gguf};
use fuzz::targets::{folder_files, Edit, FolderTarget, GgufTarget};
use fuzz::{Files, Target};
use llmq_gpu::backend::CpuBackend;
use llmq_gpu::encoding::VqScheme;
use llmq_gpu::formats::gguf::from_source::to_gguf;
use llmq_gpu::formats::hf_export::FloatType;
use llmq_gpu::model::tokenizer::Tokenizer;
use llmq_gpu::pipeline::activations::ActQuantSettings;
use llmq_gpu::pipeline::calib::CalibConfig;
use llmq_gpu::pipeline::gptq::GptqSettings;
use llmq_gpu::quant::gptvq::GptvqOptions;
use llmq_gpu::quant::range::RangeCalibrator;
use llmq_gpu::{
    quantize_model_with, CancelToken, Granularity, ModelView, QuantScheme, QuantizeConfig,
};
use rand::{Rng, SeedableRng};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

#[global_allocator]
static ALLOC: fuzz::alloc::Counting = fuzz::alloc::Counting;

/// One reader at a time: the allocation figures are process-wide.
static SERIAL: Mutex<()> = Mutex::new(());

struct Seeds {
    _dir: tempfile::TempDir,
    gguf: Vec<Gguf>,
    hf: Vec<Files>,
    sharded: Files,
    tokenizers: Vec<Files>,
    llmq: Vec<Files>,
}

fn quantize(
    model: &Path,
    out: &Path,
    bits: u32,
    config: impl FnOnce(QuantizeConfig) -> QuantizeConfig,
) {
    let scheme = QuantScheme::new(bits, bits == 8, Granularity::Group(32)).unwrap();
    let c = config(QuantizeConfig::new(model, out, scheme));
    quantize_model_with(&CpuBackend, &c, &mut |_| {}, &CancelToken::default()).unwrap();
}

/// The tiny model's one safetensors file as two shards and an index.
fn sharded(hf: &Files) -> Files {
    use safetensors::tensor::{serialize, TensorView};
    let (_, st) = hf.iter().find(|(n, _)| n == "model.safetensors").unwrap();
    let file = safetensors::SafeTensors::deserialize(st).unwrap();
    let mut names = file.names();
    names.sort();
    let mut out: Files = hf
        .iter()
        .filter(|(n, _)| n != "model.safetensors")
        .cloned()
        .collect();
    let mut map = serde_json::Map::new();
    for (k, part) in names.chunks(names.len().div_ceil(2)).enumerate() {
        let shard = format!("model-{:05}-of-00002.safetensors", k + 1);
        let views: Vec<(String, TensorView)> = part
            .iter()
            .map(|&n| (n.to_string(), file.tensor(n).unwrap()))
            .collect();
        for &n in part {
            map.insert(n.to_string(), shard.clone().into());
        }
        out.push((shard, serialize(views, None).unwrap()));
    }
    let index = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": map});
    out.push((
        "model.safetensors.index.json".into(),
        index.to_string().into_bytes(),
    ));
    out
}

fn seeds() -> &'static Seeds {
    static SEEDS: OnceLock<Seeds> = OnceLock::new();
    SEEDS.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        // Hand-built: the tiny Llama (character tokenizer), and a random
        // 2-layer one (word-level tokenizer).
        let tiny = common::tiny(&d.join("a"), true);
        let random = common::gptq_model::tiny_model(&d.join("b"), &mut rng, &|_, _| {});
        // Real: SmolLM2's metadata and tokenizer, made small.
        let real = smollm2_small(&common::smollm2_gguf(), 400, &mut rng);
        let real_path = d.join("smollm2-small.gguf");
        std::fs::write(&real_path, real.encode().bytes).unwrap();

        // The real tokenizer as a Hugging Face tokenizer.json, beside the
        // tiny model (GGUF export needs a byte-level or SentencePiece one).
        let real_view = ModelView::open(&real_path).unwrap();
        let (json, cfg) = Tokenizer::from_model(&real_view)
            .unwrap()
            .hf_files(None)
            .unwrap();
        let tiny_real = d.join("tiny-real");
        std::fs::create_dir_all(&tiny_real).unwrap();
        for (n, b) in folder_files(&tiny) {
            if !n.starts_with("tokenizer") {
                std::fs::write(tiny_real.join(n), b).unwrap();
            }
        }
        std::fs::write(tiny_real.join("tokenizer.json"), json).unwrap();
        std::fs::write(tiny_real.join("tokenizer_config.json"), cfg).unwrap();

        let rtn = d.join("rtn");
        quantize(&tiny_real, &rtn, 4, |c| c);
        let vq = d.join("vq");
        let settings = GptqSettings::new(CalibConfig {
            samples: 4,
            len: 16,
            seed: 3,
            ..CalibConfig::new(random.parent().unwrap().join("calib.txt"))
        });
        quantize(&random, &vq, 2, |c| {
            c.gptvq(
                settings,
                GptvqOptions::new(VqScheme::new(2, 2, 256, 8).unwrap()),
            )
        });
        let w8a8 = d.join("w8a8");
        let a8 = ActQuantSettings {
            dynamic: true,
            ..ActQuantSettings::new(8, RangeCalibrator::Mse).unwrap()
        };
        quantize(&tiny, &w8a8, 8, |c| c.activations(a8));

        let mut gguf = vec![real.clone(), with_sentencepiece(&real)];
        for (src, name) in [(&tiny_real, "tiny.gguf"), (&rtn, "rtn.gguf")] {
            let out = d.join(name);
            let view = ModelView::open(src).unwrap();
            to_gguf(
                view.source(),
                &out,
                FloatType::Auto,
                true,
                &mut |_, _, _| {},
            )
            .unwrap();
            gguf.push(Gguf::read(&out));
        }
        // Seeds must get through every stage, or the fuzzer starts shallow.
        for (i, g) in gguf.iter().enumerate() {
            let p = d.join(format!("seed-{i}.gguf"));
            std::fs::write(&p, g.encode().bytes).unwrap();
            let view = ModelView::open(&p).unwrap();
            let tok = Tokenizer::from_model(&view).unwrap_or_else(|e| panic!("GGUF seed {i}: {e}"));
            let ids = tok.encode("the world", true).unwrap();
            assert!(
                tok.decode(&ids).unwrap().contains("the world"),
                "GGUF seed {i}"
            );
        }
        let with_real = folder_files(&tiny_real);

        let hf = vec![folder_files(&tiny), folder_files(&random)];
        Seeds {
            sharded: sharded(&hf[0]),
            tokenizers: vec![with_real, hf[0].clone(), hf[1].clone()],
            llmq: vec![folder_files(&rtn), folder_files(&vq), folder_files(&w8a8)],
            hf,
            gguf,
            _dir: dir,
        }
    })
}

fn execs() -> usize {
    std::env::var("LLMQ_FUZZ_EXECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000)
}

fn keep_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fuzz-findings")
}

fn fuzz(target: &mut dyn Target) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let seed = std::env::var("LLMQ_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen::<u64>());
    let report = fuzz::run(target, execs(), seed, &keep_dir());
    let summary = report.summary(target.stages());
    // Printed for scripts/fuzz.sh (run with --nocapture) and for a failure.
    println!("{summary}");
    assert!(
        report.findings.is_empty(),
        "{summary}replay with LLMQ_FUZZ_SEED={seed}"
    );
}

fn folder_target(name: &'static str, seeds: Vec<Files>, edits: &[(&str, Edit)]) -> FolderTarget {
    let mut all: Vec<(String, Edit)> = edits.iter().map(|&(f, e)| (f.to_string(), e)).collect();
    // Every safetensors file of the seeds is mutated as one.
    if edits.iter().any(|(f, _)| *f == "*.safetensors") {
        all.retain(|(f, _)| f != "*.safetensors");
        let mut names: Vec<String> = seeds
            .iter()
            .flatten()
            .map(|(n, _)| n.clone())
            .filter(|n| n.ends_with(".safetensors"))
            .collect();
        names.sort();
        names.dedup();
        all.extend(names.into_iter().map(|n| (n, Edit::Safetensors)));
    }
    FolderTarget {
        name,
        seeds,
        edits: all,
    }
}

#[test]
fn fuzz_gguf_reader() {
    fuzz(&mut GgufTarget {
        seeds: seeds().gguf.clone(),
    });
}

#[test]
fn fuzz_safetensors_reader() {
    let s = seeds();
    fuzz(&mut folder_target(
        "safetensors",
        s.hf.clone(),
        &[("*.safetensors", Edit::Safetensors)],
    ));
}

#[test]
fn fuzz_shard_index() {
    let s = seeds();
    fuzz(&mut folder_target(
        "shard-index",
        vec![s.sharded.clone()],
        &[
            ("model.safetensors.index.json", Edit::Index),
            ("*.safetensors", Edit::Safetensors),
        ],
    ));
}

#[test]
fn fuzz_config_json() {
    let s = seeds();
    fuzz(&mut folder_target(
        "config",
        s.hf.clone(),
        &[("config.json", Edit::Json)],
    ));
}

#[test]
fn fuzz_tokenizer_json() {
    let s = seeds();
    fuzz(&mut folder_target(
        "tokenizer",
        s.tokenizers.clone(),
        &[
            ("tokenizer.json", Edit::Json),
            ("tokenizer_config.json", Edit::Json),
        ],
    ));
}

#[test]
fn fuzz_llmq_reader() {
    let s = seeds();
    fuzz(&mut folder_target(
        "llmq",
        s.llmq.clone(),
        &[
            ("llmq.json", Edit::Json),
            ("*.safetensors", Edit::Safetensors),
        ],
    ));
}
