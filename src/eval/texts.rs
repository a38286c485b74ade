//! The same models on several texts: each text's reports and, per model,
//! the mean over the texts (each text weighing the same, however long).
//! Quantization is judged out of domain as well as in: a method that wins
//! only on text like its calibration text has not won.

use super::run::{evaluate, EvalConfig, EvalProgress, EvalReport};
use super::table::cell;
use crate::cancel::CancelToken;
use crate::error::{Error, Result};
use serde::Serialize;
use std::path::PathBuf;

/// One model's mean over the texts.
#[derive(Clone, Debug, Serialize)]
pub struct TextMean {
    pub model: PathBuf,
    pub name: String,
    pub texts: usize,
    /// Mean over the texts of each text's mean NLL.
    pub nll: f64,
    /// `exp(nll)`: the geometric mean of the texts' perplexities.
    pub ppl: f64,
    /// Its standard error from the texts' (independent) ones.
    pub ppl_stderr: f64,
    /// Mean KL divergence and top-1 agreement; `None` without a reference.
    pub kld: Option<f64>,
    pub kld_stderr: Option<f64>,
    pub top1_agreement: Option<f64>,
    pub bits_per_weight: f64,
}

/// What [`evaluate_texts`] measured.
#[derive(Clone, Debug, Serialize)]
pub struct TextsReport {
    /// Per text (in the order given), one report per model.
    pub texts: Vec<Vec<EvalReport>>,
    /// Per model, the mean over the texts.
    pub mean: Vec<TextMean>,
}

/// Evaluates `config`'s models on each of `texts` (`config.text` is
/// ignored); `on_progress` gets the index of the text with each event.
/// Models are loaded again for each text.
pub fn evaluate_texts(
    config: &EvalConfig,
    texts: &[PathBuf],
    on_progress: &mut dyn FnMut(usize, EvalProgress),
    cancel: &CancelToken,
) -> Result<TextsReport> {
    if texts.is_empty() {
        return Err(Error::Config("no text to evaluate on: give --text".into()));
    }
    let mut per_text = Vec::with_capacity(texts.len());
    for (i, text) in texts.iter().enumerate() {
        let c = EvalConfig {
            text: text.clone(),
            ..config.clone()
        };
        per_text.push(evaluate(&c, &mut |p| on_progress(i, p), cancel)?);
    }
    let mean = means(&per_text);
    Ok(TextsReport {
        texts: per_text,
        mean,
    })
}

/// Per model, the mean of its reports over the texts.
fn means(per_text: &[Vec<EvalReport>]) -> Vec<TextMean> {
    let n = per_text.len() as f64;
    let models = per_text.first().map_or(0, Vec::len);
    (0..models)
        .map(|m| {
            let rs: Vec<&EvalReport> = per_text.iter().map(|t| &t[m]).collect();
            let nll = rs.iter().map(|r| r.nll).sum::<f64>() / n;
            let ppl = nll.exp();
            // stderr(NLL) of a text is ppl_stderr / ppl (llama.cpp's ±).
            let se_nll = rs
                .iter()
                .map(|r| (r.ppl_stderr / r.ppl.max(f64::MIN_POSITIVE)).powi(2))
                .sum::<f64>()
                .sqrt()
                / n;
            let mean_of = |f: &dyn Fn(&EvalReport) -> Option<f64>| -> Option<f64> {
                rs.iter().map(|r| f(r)).sum::<Option<f64>>().map(|s| s / n)
            };
            let kld_stderr = rs
                .iter()
                .map(|r| r.kld_stderr.map(|e| e * e))
                .sum::<Option<f64>>()
                .map(|s| s.sqrt() / n);
            TextMean {
                model: rs[0].model.clone(),
                name: rs[0].name.clone(),
                texts: rs.len(),
                nll,
                ppl,
                ppl_stderr: ppl * se_nll,
                kld: mean_of(&|r| r.kld),
                kld_stderr,
                top1_agreement: mean_of(&|r| r.top1_agreement),
                bits_per_weight: rs[0].bits_per_weight,
            }
        })
        .collect()
}

/// A markdown table: one row per model, PPL / KLD / top-1 for each text
/// and their mean.
pub fn markdown_texts_table(report: &TextsReport) -> String {
    let Some(first) = report.texts.first().and_then(|t| t.first()) else {
        return String::new();
    };
    let name = |r: &EvalReport| {
        r.text.file_stem().map_or_else(
            || r.text.display().to_string(),
            |s| s.to_string_lossy().into_owned(),
        )
    };
    let mut out = format!(
        "Per text: {} windows of {} tokens at most (second half of each scored){}; the mean \
         weighs each text the same (PPL: exp of the mean NLL).\n\n",
        first.chunks,
        first.ctx,
        match &first.reference {
            Some(p) => format!(
                "; KL divergence and top-1 against `{}`",
                cell(&p.display().to_string())
            ),
            None => String::new(),
        }
    );
    let texts: Vec<String> = report.texts.iter().map(|t| name(&t[0])).collect();
    out.push_str("| model | bits/weight |");
    for t in texts.iter().map(String::as_str).chain(["mean"]) {
        out.push_str(&format!(" {} PPL | KLD | top-1 |", cell(t)));
    }
    out.push_str("\n|---|---:|");
    out.push_str(&"---:|---:|---:|".repeat(texts.len() + 1));
    out.push('\n');
    let opt = |v: Option<f64>, f: &dyn Fn(f64) -> String| v.map_or_else(|| "—".into(), f);
    for (m, mean) in report.mean.iter().enumerate() {
        out.push_str(&format!(
            "| {} | {:.3} |",
            cell(&mean.name),
            mean.bits_per_weight
        ));
        let cells = report
            .texts
            .iter()
            .map(|t| (t[m].ppl, t[m].kld, t[m].top1_agreement))
            .chain([(mean.ppl, mean.kld, mean.top1_agreement)]);
        for (ppl, kld, top1) in cells {
            out.push_str(&format!(
                " {ppl:.3} | {} | {} |",
                opt(kld, &|k| format!("{k:.4}")),
                opt(top1, &|t| format!("{:.1}%", t * 100.0))
            ));
        }
        out.push('\n');
    }
    out
}

/// The means as reports (of the first text, with the mean PPL and its
/// standard error, and the texts named together), for charts.
pub fn mean_reports(report: &TextsReport) -> Vec<EvalReport> {
    let Some(first) = report.texts.first() else {
        return Vec::new();
    };
    let names: Vec<String> = report
        .texts
        .iter()
        .map(|t| t[0].text.display().to_string())
        .collect();
    first
        .iter()
        .zip(&report.mean)
        .map(|(r, m)| EvalReport {
            text: PathBuf::from(format!("mean of {}", names.join(", "))),
            ppl: m.ppl,
            ppl_stderr: m.ppl_stderr,
            nll: m.nll,
            kld: m.kld,
            kld_stderr: m.kld_stderr,
            top1_agreement: m.top1_agreement,
            top1_stderr: None,
            ..r.clone()
        })
        .collect()
}
