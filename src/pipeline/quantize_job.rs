//! [`QuantizeJob`]: a quantization run on its own thread, for async
//! callers (desktop apps).

use super::quantize::{quantize_model, CancelToken, Progress, QuantizeConfig, QuantizeReport};
use crate::error::{Error, Result};

/// A quantization run on its own thread, for async callers (desktop apps).
/// Destructure it: stream `progress`, keep `cancel` for a Stop button,
/// `.await` `result`.
pub struct QuantizeJob {
    pub progress: futures::channel::mpsc::UnboundedReceiver<Progress>,
    pub cancel: CancelToken,
    pub result: JobResult,
}

impl QuantizeJob {
    pub fn spawn(config: QuantizeConfig) -> Self {
        let (tx, progress) = futures::channel::mpsc::unbounded();
        let (done, result) = futures::channel::oneshot::channel();
        let cancel = CancelToken::default();
        let token = cancel.clone();
        std::thread::spawn(move || {
            let r = quantize_model(&config, &mut |p| drop(tx.unbounded_send(p)), &token);
            let _ = done.send(r);
        });
        Self {
            progress,
            cancel,
            result: JobResult(result),
        }
    }
}

/// The report of a [`QuantizeJob`], as a future.
pub struct JobResult(futures::channel::oneshot::Receiver<Result<QuantizeReport>>);

impl std::future::Future for JobResult {
    type Output = Result<QuantizeReport>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx).map(|r| {
            r.unwrap_or_else(|_| {
                Err(Error::Config(
                    "the quantization thread ended without a result".into(),
                ))
            })
        })
    }
}
