//! A markdown table of evaluation reports, one row per model.

use super::run::EvalReport;

/// `1234567` → `1.18 MiB`.
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}

/// Escapes what would break a markdown table cell.
pub(crate) fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

/// The reports as a GitHub markdown table, with a line naming the text and settings.
pub fn markdown_table(reports: &[EvalReport]) -> String {
    let mut out = String::new();
    if let Some(r) = reports.first() {
        out.push_str(&format!(
            "Perplexity on `{}`: {} windows of {} tokens (second half of each scored, {} tokens){}.\n\n",
            cell(&r.text.display().to_string()),
            r.chunks,
            r.ctx,
            r.tokens_scored,
            match &r.reference {
                Some(p) => format!("; KL divergence and top-1 against `{}`", cell(&p.display().to_string())),
                None => String::new(),
            }
        ));
    }
    out.push_str(
        "| model | bits/weight | size | PPL | KLD | top-1 agreement | tokens/s | device |\n",
    );
    out.push_str("|---|---:|---:|---:|---:|---:|---:|---|\n");
    for r in reports {
        let kld = match (r.kld, r.kld_stderr) {
            (Some(k), Some(e)) => format!("{k:.5} ± {e:.5}"),
            _ => "—".into(),
        };
        let top1 = match r.top1_agreement {
            Some(t) => format!("{:.2}%", t * 100.0),
            None => "—".into(),
        };
        out.push_str(&format!(
            "| {} | {:.3} | {} | {:.4} ± {:.4} | {} | {} | {:.1} | {} |\n",
            cell(&r.name),
            r.bits_per_weight,
            human_bytes(r.size_bytes),
            r.ppl,
            r.ppl_stderr,
            kld,
            top1,
            r.tokens_per_second,
            cell(&r.device),
        ));
    }
    out
}
