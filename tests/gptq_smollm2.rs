//! GPTQ against RTN on real SmolLM2 layer-0 inputs from Emma, tested on
//! held-out windows (split from tests/gptq.rs, whose header states the
//! GPU-vs-CPU bounds).

mod common;
use llmq_gpu::backend::{Backend, CpuBackend};
use llmq_gpu::model::forward::{CpuForward, LinearSite};
use llmq_gpu::model::{ModelView, Tokenizer};
use llmq_gpu::quant::gptq::{self, GptqOptions, Hessian};
use llmq_gpu::quant::rtn;
use llmq_gpu::{Granularity, QuantScheme};
use std::path::PathBuf;

/// Inputs of layer 0's q/k/v and down_proj (each `[windows·seq, width]`
/// with its width) for `windows` windows of `seq` tokens spread over `text`.
type Inputs = (Vec<f32>, usize);
fn layer0_inputs(
    model: &CpuForward,
    tokenizer: &Tokenizer,
    text: &str,
    windows: usize,
    seq: usize,
) -> (Inputs, Inputs) {
    let ids = tokenizer.encode(text, false).expect("encode");
    assert!(ids.len() >= windows * seq, "text too short");
    let stride = (ids.len() - seq) / windows;
    let tokens: Vec<u32> = (0..windows)
        .flat_map(|k| ids[k * stride..k * stride + seq].iter().copied())
        .collect();
    let mut hidden = model.embed(&tokens).expect("embed");
    let (mut x_qkv, mut x_down) = (None, None);
    model
        .layer(0, &mut hidden, seq, &mut |input| match input.site {
            LinearSite::AttnQkv => x_qkv = Some((input.x.to_vec(), input.width)),
            LinearSite::MlpDown => x_down = Some((input.x.to_vec(), input.width)),
            _ => {}
        })
        .expect("layer 0");
    (
        x_qkv.expect("q/k/v input captured"),
        x_down.expect("down input captured"),
    )
}

fn emma() -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".cache/austen/emma.txt");
    std::fs::read_to_string(&p).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run scripts/fetch-fixtures.sh to fetch the Austen texts",
            p.display()
        )
    })
}

/// Layer 0 of SmolLM2-135M, calibrated on windows of 128 Emma tokens: with
/// 8 windows (1 024 tokens) and with 32 (4 096), GPTQ's true output error
/// ‖WX − ŴX‖²/‖WX‖² on the calibration inputs is below RTN's for q_proj
/// and down_proj at W4 g128 and W3 g128 (also with act-order). On 8 held-out windows from later
/// in the novel it must be below RTN's too with 32 calibration windows;
/// with 8, fewer tokens than down_proj's 1 536 inputs, GPTQ overfits
/// down_proj (held-out error about RTN's), so that case is only printed.
#[test]
fn gptq_beats_rtn_on_smollm2_layer0() {
    let view = ModelView::open(common::smollm2_gguf()).expect("SmolLM2 opens");
    let tokenizer = Tokenizer::from_model(&view).expect("tokenizer");
    let model = CpuForward::load(&view).expect("weights load");
    let seq = 128;
    let text = emma();
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let at = |c: usize| chars.get(c).map_or(text.len(), |&(i, _)| i);
    // Calibration windows spread over the first 200 000 characters; held
    // out: 8 windows from characters 400 000 to 600 000.
    let held_out = layer0_inputs(&model, &tokenizer, &text[at(400_000)..at(600_000)], 8, seq);
    let layer = &model.weights.layers[0];
    for windows in [8, 32] {
        let calib = layer0_inputs(&model, &tokenizer, &text[..at(200_000)], windows, seq);
        let n = windows * seq;
        let cases = [
            ("blk.0.attn_q", &layer.q, &calib.0, &held_out.0),
            ("blk.0.ffn_down", &layer.down, &calib.1, &held_out.1),
        ];
        for (name, linear, (x, width), (x_out, _)) in cases {
            let (rows, cols) = (linear.rows(), linear.cols());
            assert_eq!(*width, cols, "{name}: input width");
            let w = &linear.dense_weights().expect("dense reference weights");
            let mut hess = Hessian::new(cols);
            hess.add_batch(&CpuBackend, name, x, n).unwrap();
            for (bits, gran) in [(4, Granularity::Group(128)), (3, Granularity::Group(128))] {
                let scheme = QuantScheme::new(bits, false, gran).unwrap();
                let label = format!("{name} [{rows}x{cols}] {}, {n} tokens", scheme.label());
                let rtn_q = rtn::quantize(&CpuBackend, name, w, rows, cols, &scheme).unwrap();
                let rtn_w = CpuBackend.dequantize(&rtn_q).unwrap();
                let (gq, report) = gptq::quantize(
                    &CpuBackend,
                    name,
                    w,
                    rows,
                    cols,
                    &hess.h,
                    &scheme,
                    &GptqOptions::default(),
                )
                .unwrap();
                let gptq_w = CpuBackend.dequantize(&gq).unwrap();
                let e_rtn = common::output_error(w, &rtn_w, x, rows, cols, n);
                let e_gptq = common::output_error(w, &gptq_w, x, rows, cols, n);
                let h_rtn = common::output_error(w, &rtn_w, x_out, rows, cols, 8 * seq);
                let h_gptq = common::output_error(w, &gptq_w, x_out, rows, cols, 8 * seq);
                eprintln!(
                    "{label}: output error GPTQ {e_gptq:.4e} vs RTN {e_rtn:.4e} (ratio {:.3}); \
                     held out GPTQ {h_gptq:.4e} vs RTN {h_rtn:.4e} (ratio {:.3}); \
                     proxy {:.4e}, damp {} ({} retries), {} dead inputs",
                    e_gptq / e_rtn,
                    h_gptq / h_rtn,
                    report.proxy_error,
                    report.damp_used,
                    report.damp_retries,
                    report.dead_columns
                );
                assert!(
                    e_gptq < e_rtn,
                    "{label}: GPTQ {e_gptq} not below RTN {e_rtn}"
                );
                // Act-order (static groups) on the same inputs.
                let act = GptqOptions {
                    act_order: true,
                    ..GptqOptions::default()
                };
                let (aq, _) =
                    gptq::quantize(&CpuBackend, name, w, rows, cols, &hess.h, &scheme, &act)
                        .unwrap();
                let act_w = CpuBackend.dequantize(&aq).unwrap();
                let e_act = common::output_error(w, &act_w, x, rows, cols, n);
                let h_act = common::output_error(w, &act_w, x_out, rows, cols, 8 * seq);
                eprintln!("{label}: act-order GPTQ {e_act:.4e}, held out {h_act:.4e}");
                assert!(
                    e_act < e_rtn,
                    "{label}: act-order GPTQ {e_act} not below RTN {e_rtn}"
                );
                if n > cols {
                    assert!(
                        h_gptq < h_rtn,
                        "{label}: held out, GPTQ {h_gptq} not below RTN {h_rtn}"
                    );
                }
            }
        }
    }
}
