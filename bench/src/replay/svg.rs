//! The replay plot, hand-written SVG (no plotting dependency for three polylines): the
//! shared cap's memory.current over time for each arm at one N, with the cap as a line.

use std::fmt::Write as _;

use super::RunResult;

const W: f64 = 720.0;
const H: f64 = 360.0;
const PAD: f64 = 48.0;
const COLOURS: [&str; 3] = ["#d62728", "#1f77b4", "#2ca02c"];

pub(super) fn plot(runs: &[&RunResult], cap_mib: u32, n: usize) -> String {
    let t_max = runs
        .iter()
        .flat_map(|r| r.series.iter().map(|s| s.0))
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let y_max = f64::from(cap_mib) * 1.1;
    let x = |ms: f64| PAD + (W - 2.0 * PAD) * ms / t_max;
    let y = |mib: f64| H - PAD - (H - 2.0 * PAD) * (mib / y_max).min(1.0);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{PAD}" y="20">memory.current of the shared cap, {n} sessions (MiB over seconds)</text>"#
    );
    // Axes and ticks.
    let _ = writeln!(
        s,
        r#"<line x1="{PAD}" y1="{}" x2="{}" y2="{}" stroke="black"/><line x1="{PAD}" y1="{PAD}" x2="{PAD}" y2="{}" stroke="black"/>"#,
        H - PAD,
        W - PAD,
        H - PAD,
        H - PAD
    );
    for i in 0..=4 {
        let mib = y_max * f64::from(i) / 4.0;
        let _ = writeln!(s, r#"<text x="4" y="{:.1}">{mib:.0}</text>"#, y(mib) + 4.0);
        let ms = t_max * f64::from(i) / 4.0;
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{}">{:.0}</text>"#,
            x(ms) - 8.0,
            H - PAD + 16.0,
            ms / 1000.0
        );
    }
    let cy = y(f64::from(cap_mib));
    let _ = writeln!(
        s,
        r#"<line x1="{PAD}" y1="{cy:.1}" x2="{}" y2="{cy:.1}" stroke="gray" stroke-dasharray="6,4"/><text x="{}" y="{:.1}" fill="gray">cap {cap_mib} MiB</text>"#,
        W - PAD,
        W - PAD - 90.0,
        cy - 4.0
    );
    for (i, r) in runs.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let pts: Vec<String> = r
            .series
            .iter()
            .map(|(t, m)| format!("{:.1},{:.1}", x(*t as f64), y(*m)))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{}"/>"#,
            pts.join(" ")
        );
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" fill="{colour}">{} — {}/{} completed, {} OOM kills</text>"#,
            PAD + 10.0,
            PAD + 4.0 + 16.0 * i as f64,
            r.arm.name(),
            r.completed,
            r.n,
            r.oom_kills
        );
    }
    s.push_str("</svg>\n");
    s
}
