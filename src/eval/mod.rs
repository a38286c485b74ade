//! Model quality and speed: perplexity under llama.cpp's `perplexity`
//! protocol, KL divergence and top-1 agreement against a reference model,
//! size and bits per weight, prompt-processing speed; tables and charts
//! comparing several models.
//!
//! ```no_run
//! use llmq_gpu::eval::{evaluate, EvalConfig};
//! use llmq_gpu::CancelToken;
//! let config = EvalConfig::new(vec!["model-w4g128".into()], "persuasion.txt")
//!     .reference(Some("model.gguf".into()))
//!     .ctx(512)
//!     .chunks(Some(20));
//! let reports = evaluate(&config, &mut |p| eprintln!("{p:?}"), &CancelToken::default())?;
//! println!("PPL {:.3}, KLD {:?}", reports[0].ppl, reports[0].kld);
//! # Ok::<(), llmq_gpu::Error>(())
//! ```

pub mod chart;
pub mod protocol;
pub mod run;
pub mod size;
pub mod table;
pub mod texts;

pub use chart::ppl_vs_bits_svg;
pub use protocol::{Scores, Windows};
pub use run::{
    evaluate, evaluate_forwards, ActCalib, EvalConfig, EvalProgress, EvalReport, ForwardScores,
};
pub use table::markdown_table;
pub use texts::{evaluate_texts, markdown_texts_table, mean_reports, TextMean, TextsReport};
