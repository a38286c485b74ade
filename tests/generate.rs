//! `generate` on the real SmolLM2-135M-Instruct (CPU backend): greedy
//! decoding with the KV cache must pick the same tokens as recomputing the
//! full sequence each step, and answer a simple prompt sensibly. Plus the
//! bad-input errors.

mod common;

use llmq_gpu::generate::{generate, sampler::argmax, GenerateOptions, SamplerConfig, StopReason};
use llmq_gpu::model::forward::{CpuForward, Forward};
use llmq_gpu::model::Tokenizer;
use llmq_gpu::{CancelToken, ModelView};

fn greedy(n: usize) -> GenerateOptions {
    GenerateOptions {
        max_tokens: n,
        sampler: SamplerConfig {
            temperature: 0.0,
            ..Default::default()
        },
        ..Default::default()
    }
}

#[test]
fn greedy_generation_with_the_cache_matches_full_recomputation() {
    let view = ModelView::open(common::smollm2_gguf()).expect("open");
    let tok = Tokenizer::from_model(&view).expect("tokenizer");
    let model = CpuForward::load(&view).expect("load");
    let prompt = "The capital of France is";
    let mut streamed = String::new();
    let report = generate(
        &model,
        &tok,
        prompt,
        &greedy(8),
        &mut |p| streamed.push_str(p),
        &CancelToken::default(),
    )
    .expect("generate");
    eprintln!("{prompt}{streamed:?} ({:?})", report.stop);
    assert_eq!(streamed, report.text, "streamed pieces add up to the text");
    assert!(report.text.contains("Paris"), "{:?}", report.text);

    // The same tokens by recomputing all logits each step, no cache.
    let mut ids = tok.encode(prompt, tok.add_bos_default()).expect("encode");
    let n_prompt = ids.len();
    for _ in 0..report.generated_tokens {
        let logits = model.logits(&ids).expect("logits");
        let vocab = model.arch().vocab_size;
        ids.push(argmax(&logits[(ids.len() - 1) * vocab..]) as u32);
    }
    assert_eq!(tok.decode(&ids[n_prompt..]).expect("decode"), report.text);
}

#[test]
fn bad_requests_are_errors() {
    let view = ModelView::open(common::smollm2_gguf()).expect("open");
    let tok = Tokenizer::from_model(&view).expect("tokenizer");
    let model = CpuForward::load(&view).expect("load");
    let run = |prompt: &str, opts: &GenerateOptions| {
        generate(
            &model,
            &tok,
            prompt,
            opts,
            &mut |_| {},
            &CancelToken::default(),
        )
    };
    let e = run("", &greedy(4)).expect_err("empty prompt");
    assert!(e.to_string().contains("prompt is empty"), "{e}");
    let e = run("Hi", &greedy(0)).expect_err("zero tokens");
    assert!(e.to_string().contains("at least 1"), "{e}");
    let mut hot = greedy(4);
    hot.sampler.temperature = -1.0;
    assert!(run("Hi", &hot).is_err());
    let long = "word ".repeat(model.arch().context_length + 10);
    let e = run(&long, &greedy(4)).expect_err("prompt too long");
    assert!(e.to_string().contains("context holds"), "{e}");

    let cancel = CancelToken::default();
    cancel.cancel();
    let r = generate(&model, &tok, "Hi", &greedy(4), &mut |_| {}, &cancel).expect("cancelled run");
    assert_eq!((r.stop, r.generated_tokens), (StopReason::Cancelled, 0));
}
