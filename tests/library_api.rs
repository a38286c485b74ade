//! The library as a desktop app uses it: progress events in order, a cancel
//! token that stops the run and leaves no output, and the report.

mod common;

use futures::StreamExt;
use llmq_gpu::{
    CancelToken, DeviceChoice, Error, Granularity, Progress, QuantScheme, QuantizeConfig,
    QuantizeJob,
};

fn config(dir: &std::path::Path) -> QuantizeConfig {
    let model = common::tiny_llama(dir, None);
    let scheme = QuantScheme::new(4, true, Granularity::Group(32)).unwrap();
    QuantizeConfig::new(model, dir.join("out"), scheme).device(DeviceChoice::Cpu)
}

#[test]
fn progress_events_arrive_in_order_and_the_report_counts_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let mut events = vec![];
    let report =
        llmq_gpu::quantize_model(&cfg, &mut |p| events.push(p), &CancelToken::default()).unwrap();
    assert!(
        matches!(events.first(), Some(Progress::Started { tensors: 11, .. })),
        "{events:?}"
    );
    assert!(
        matches!(events.last(), Some(Progress::Writing)),
        "{events:?}"
    );
    let tensors = events
        .iter()
        .filter(|e| matches!(e, Progress::Tensor { .. }))
        .count();
    assert_eq!(tensors, 11);
    assert_eq!((report.quantized_tensors, report.kept_tensors), (7, 4));
    // 4 bits of code + one f16 scale per 32 weights (symmetric: no zeros).
    assert!(
        (report.bits_per_weight - 4.5).abs() < 1e-9,
        "{}",
        report.bits_per_weight
    );
    assert!(dir.path().join("out/llmq.json").exists());
}

#[test]
fn cancelling_stops_the_run_and_leaves_no_output() {
    let dir = tempfile::tempdir().unwrap();
    let cancel = CancelToken::default();
    // The callback runs on the quantizing thread, so cancelling there is
    // seen before the next tensor: deterministic, unlike a remote cancel.
    let outcome = llmq_gpu::quantize_model(
        &config(dir.path()),
        &mut |p| {
            if let Progress::Tensor { index: 2, .. } = p {
                cancel.cancel();
            }
        },
        &cancel,
    );
    assert!(matches!(outcome, Err(Error::Cancelled)), "{outcome:?}");
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        vec!["tiny-llama".to_string()],
        "nothing but the input may remain"
    );
}

#[test]
fn async_job_streams_progress_and_resolves_to_the_report() {
    let dir = tempfile::tempdir().unwrap();
    let QuantizeJob {
        mut progress,
        cancel: _,
        result,
    } = QuantizeJob::spawn(config(dir.path()));
    let (events, report) = pollster::block_on(async move {
        let mut n = 0;
        while progress.next().await.is_some() {
            n += 1;
        }
        (n, result.await)
    });
    // Started + 11 tensors + Writing.
    assert_eq!(events, 13);
    assert_eq!(report.unwrap().quantized_tensors, 7);
}
