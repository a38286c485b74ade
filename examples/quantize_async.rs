//! Quantize a model the way a desktop app would: the run on its own thread,
//! a progress stream, a cancel token, and the report as a future.
//!
//! cargo run --example quantize_async -- MODEL OUT [--cancel-after N]

use futures::StreamExt;
use llmq_gpu::{DeviceChoice, Granularity, Progress, QuantScheme, QuantizeConfig, QuantizeJob};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(model), Some(out)) = (args.first(), args.get(1)) else {
        eprintln!("usage: quantize_async MODEL OUT [--cancel-after N]");
        std::process::exit(2);
    };
    let cancel_after: Option<usize> = match args.get(2).map(String::as_str) {
        Some("--cancel-after") => args.get(3).and_then(|n| n.parse().ok()),
        _ => None,
    };

    let scheme = QuantScheme::new(4, false, Granularity::Group(128))?;
    let config = QuantizeConfig::new(model, out, scheme)
        .device(DeviceChoice::Auto)
        .overwrite(true);
    let QuantizeJob {
        mut progress,
        cancel,
        result,
    } = QuantizeJob::spawn(config);

    // Any executor works; pollster keeps the example small.
    let report = pollster::block_on(async move {
        let mut done = 0;
        while let Some(event) = progress.next().await {
            match event {
                Progress::Started { tensors, backend } => {
                    println!("{tensors} tensors on {backend}")
                }
                Progress::Tensor {
                    index, total, name, ..
                } => {
                    done += 1;
                    println!("[{}/{total}] {name}", index + 1);
                    if cancel_after == Some(done) {
                        println!("cancelling");
                        cancel.cancel();
                    }
                }
                Progress::Activations { what, windows } => {
                    println!("activations: {what} on {windows} windows")
                }
                Progress::Calibrated { tokens, layers } => {
                    println!("GPTQ: {tokens} calibration tokens, {layers} layers")
                }
                Progress::Layer {
                    index,
                    total,
                    gptq_error,
                    rtn_error,
                    ..
                } => println!(
                    "layer {}/{total}: GPTQ error {gptq_error:.3e} (RTN {rtn_error:.3e})",
                    index + 1
                ),
                Progress::Resumed {
                    layers, checkpoint, ..
                } => println!("resuming: {layers} layers done in {}", checkpoint.display()),
                Progress::Writing => println!("writing"),
            }
        }
        result.await
    });
    match report {
        Ok(r) => println!(
            "done: {} quantized, {:.3} bits/weight",
            r.quantized_tensors, r.bits_per_weight
        ),
        Err(e) => println!("stopped: {e}"),
    }
    Ok(())
}
