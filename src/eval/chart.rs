//! A scatter chart of perplexity against bits per weight as a standalone
//! SVG file: labelled axes with ticks, one labelled point per model. Written
//! by hand, so no font or system libraries are needed.

use super::run::EvalReport;
use std::fmt::Write;

const W: f64 = 720.0;
const H: f64 = 480.0;
/// Plot area margins: left, right, top, bottom.
const ML: f64 = 80.0;
const MR: f64 = 40.0;
const MT: f64 = 50.0;
const MB: f64 = 60.0;
const COLORS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
];

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A padded axis range around `values` and "nice" ticks inside it.
fn axis(values: impl Iterator<Item = f64>) -> (f64, f64, Vec<f64>) {
    let (mut lo, mut hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
    if !lo.is_finite() {
        (lo, hi) = (0.0, 1.0);
    }
    let span = hi - lo;
    let pad = if span > 0.0 {
        span * 0.1
    } else {
        lo.abs().max(1.0) * 0.1
    };
    lo -= pad;
    hi += pad;
    let raw = (hi - lo) / 8.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let mut ticks = Vec::new();
    let mut t = (lo / step).ceil() * step;
    while t <= hi + step * 1e-9 && ticks.len() < 20 {
        ticks.push(t);
        t += step;
    }
    (lo, hi, ticks)
}

fn tick_label(v: f64) -> String {
    let s = format!("{v:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".into()
    } else {
        s.to_string()
    }
}

/// The chart as SVG text: x = bits per weight of the block linears,
/// y = perplexity (with its ± standard error as a bar), labelled by model name.
pub fn ppl_vs_bits_svg(reports: &[EvalReport]) -> String {
    let (x0, x1, xt) = axis(reports.iter().map(|r| r.bits_per_weight));
    let (y0, y1, yt) = axis(
        reports
            .iter()
            .flat_map(|r| [r.ppl - r.ppl_stderr, r.ppl + r.ppl_stderr]),
    );
    let px = |x: f64| ML + (x - x0) / (x1 - x0) * (W - ML - MR);
    let py = |y: f64| H - MB - (y - y0) / (y1 - y0) * (H - MT - MB);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let title = match reports.first() {
        Some(r) => format!(
            "Perplexity vs bits per weight ({}, ctx {}, {} chunks)",
            r.text
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
            r.ctx,
            r.chunks
        ),
        None => "Perplexity vs bits per weight".into(),
    };
    let _ = writeln!(
        s,
        r#"<text x="{}" y="28" text-anchor="middle" font-size="16">{}</text>"#,
        W / 2.0,
        xml(&title)
    );
    // Frame, grid and ticks.
    let _ = writeln!(
        s,
        r##"<rect x="{ML}" y="{MT}" width="{}" height="{}" fill="none" stroke="#333"/>"##,
        W - ML - MR,
        H - MT - MB
    );
    for &t in &xt {
        let x = px(t);
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{MT}" x2="{x:.1}" y2="{}" stroke="#ddd"/><text x="{x:.1}" y="{}" text-anchor="middle">{}</text>"##,
            H - MB,
            H - MB + 18.0,
            tick_label(t)
        );
    }
    for &t in &yt {
        let y = py(t);
        let _ = writeln!(
            s,
            r##"<line x1="{ML}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            W - MR,
            ML - 6.0,
            y + 4.0,
            tick_label(t)
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle" font-size="14">bits per weight (decoder linear layers)</text>"#,
        (ML + W - MR) / 2.0,
        H - 18.0
    );
    let _ = writeln!(
        s,
        r#"<text x="20" y="{0}" text-anchor="middle" font-size="14" transform="rotate(-90 20 {0})">perplexity</text>"#,
        (MT + H - MB) / 2.0
    );
    for (i, r) in reports.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        let (x, y) = (px(r.bits_per_weight), py(r.ppl));
        let (ya, yb) = (py(r.ppl - r.ppl_stderr), py(r.ppl + r.ppl_stderr));
        let _ = writeln!(
            s,
            r#"<line x1="{x:.1}" y1="{ya:.1}" x2="{x:.1}" y2="{yb:.1}" stroke="{c}"/><circle cx="{x:.1}" cy="{y:.1}" r="5" fill="{c}"><title>{}</title></circle>"#,
            xml(&format!(
                "{}: {:.3} bits/weight, PPL {:.4} ± {:.4}",
                r.name, r.bits_per_weight, r.ppl, r.ppl_stderr
            ))
        );
        // Labels alternate above and below so neighbours overlap less.
        let dy = if i % 2 == 0 { -10.0 } else { 18.0 };
        let anchor = if x > W - MR - 120.0 { "end" } else { "start" };
        let dx = if anchor == "end" { -8.0 } else { 8.0 };
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="{anchor}" fill="{c}">{} ({:.2})</text>"#,
            x + dx,
            y + dy,
            xml(&r.name),
            r.ppl
        );
    }
    s.push_str("</svg>\n");
    s
}
