//! Reports: a JSON file and a markdown table per run set, and PNG plots of latency
//! percentiles and throughput over time for each run.

use std::path::Path;

use anyhow::Context;
use plotters::prelude::*;

use crate::runner::RunResult;

/// `{"runs": [...]}`.
pub fn write_json(dir: &Path, runs: &[RunResult]) -> anyhow::Result<()> {
    let path = dir.join("results.json");
    let body = serde_json::json!({ "runs": runs });
    std::fs::write(&path, serde_json::to_string_pretty(&body)?)
        .with_context(|| format!("writing {}", path.display()))
}

/// The comparison table: throughput, latency percentiles, server CPU, and each target's
/// throughput relative to the reference (the first Ordo run, else the first run).
pub fn table(runs: &[RunResult]) -> String {
    let reference = runs
        .iter()
        .find(|r| r.target.starts_with("ordo"))
        .or(runs.first())
        .map(|r| (r.target.clone(), r.throughput_ops_s));
    let mut out = String::new();
    let ref_name = reference.as_ref().map(|r| r.0.as_str()).unwrap_or("-");
    out.push_str(&format!(
        "| target | workload | clients | ops/s | p50 ms | p99 ms | p99.9 ms | server CPU s | {ref_name} ÷ target | check |\n"
    ));
    out.push_str("|---|---|---:|---:|---:|---:|---:|---:|---:|---|\n");
    for r in runs {
        let ratio = match &reference {
            Some((_, base)) if r.throughput_ops_s > 0.0 => {
                format!("{:.1}×", base / r.throughput_ops_s)
            }
            _ => "-".into(),
        };
        let check = if r.check.ok {
            format!(
                "ok ({} sold, {} rejected{})",
                r.check.orders_ok,
                r.check.orders_rejected.values().sum::<u64>(),
                if r.check.errors.is_empty() {
                    String::new()
                } else {
                    format!(", {} errors", r.check.errors.values().sum::<u64>())
                }
            )
        } else {
            format!(
                "FAILED: {}",
                r.check.problems.first().cloned().unwrap_or_default()
            )
        };
        out.push_str(&format!(
            "| {} | {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.1} | {} | {} |\n",
            r.target,
            r.workload,
            r.clients,
            r.throughput_ops_s,
            r.latency_us.p50 as f64 / 1000.0,
            r.latency_us.p99 as f64 / 1000.0,
            r.latency_us.p999 as f64 / 1000.0,
            r.server_cpu_s,
            ratio,
            check
        ));
    }
    if runs.iter().any(|r| r.cart.is_some()) {
        out.push('\n');
        out.push_str(&cart_table(runs));
    }
    if runs.iter().any(|r| r.nearby.is_some()) {
        out.push('\n');
        out.push_str(&nearby_table(runs));
    }
    out
}

/// The nearby workloads' table: server CPU per operation, each target's throughput over
/// PostgreSQL's and Redis's from the same run, and the orders committed and rejected.
pub fn nearby_table(runs: &[RunResult]) -> String {
    let rate_of = |name: &str| {
        runs.iter()
            .find(|r| r.target == name)
            .map(|r| r.throughput_ops_s)
    };
    let ratio = |ops: f64, base: Option<f64>| match base {
        Some(base) if base > 0.0 => format!("{:.2}×", ops / base),
        _ => "-".into(),
    };
    let (postgres, redis) = (rate_of("postgres"), rate_of("redis"));
    let mut out = String::from(
        "| target | workload | ops/s | p50 ms | p99 ms | server CPU µs/op | harness CPU µs/op | ÷ postgres | ÷ redis | stores per answer | committed (per s) | rejected | check |\n",
    );
    out.push_str("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n");
    for r in runs {
        let Some(n) = &r.nearby else { continue };
        let (answers, committed, rejected) = if r.workload == "browse-nearby" {
            (
                format!("{:.1}", n.dcs_per_answer_mean),
                "-".into(),
                "-".into(),
            )
        } else {
            (
                "-".into(),
                format!("{} ({:.0})", n.committed, n.committed_s),
                n.rejected.to_string(),
            )
        };
        let check = if r.check.ok {
            if r.workload == "browse-nearby" {
                format!("ok ({} answers verified)", n.answers_verified)
            } else {
                format!(
                    "ok ({} units sold = {} decremented, {} rows < 0)",
                    n.units_sold, n.units_decremented, n.rows_negative
                )
            }
        } else {
            format!(
                "FAILED: {}",
                r.check.problems.first().cloned().unwrap_or_default()
            )
        };
        let errors = r.check.errors.values().sum::<u64>();
        out.push_str(&format!(
            "| {} | {} | {:.0} | {:.2} | {:.2} | {:.0} | {:.0} | {} | {} | {} | {} | {} | {}{} |\n",
            r.target,
            r.workload,
            r.throughput_ops_s,
            r.latency_us.p50 as f64 / 1000.0,
            r.latency_us.p99 as f64 / 1000.0,
            n.server_cpu_us_per_op,
            n.harness_cpu_us_per_op,
            ratio(r.throughput_ops_s, postgres),
            ratio(r.throughput_ops_s, redis),
            answers,
            committed,
            rejected,
            check,
            if errors > 0 {
                format!(", {errors} errors")
            } else {
                String::new()
            }
        ));
    }
    out
}

/// The cart workload's table: carts per second and the ratio to the reference (the first Ordo
/// run, else the first run), cart latency, server CPU per cart, and the check's counts.
pub fn cart_table(runs: &[RunResult]) -> String {
    let carts: Vec<(&RunResult, &crate::cart::CartReport)> = runs
        .iter()
        .filter_map(|r| r.cart.as_ref().map(|c| (r, c)))
        .collect();
    let reference = carts
        .iter()
        .find(|(r, _)| r.target.starts_with("ordo"))
        .or(carts.first())
        .map(|(r, c)| (r.target.clone(), c.carts_s));
    let ref_name = reference.as_ref().map(|r| r.0.as_str()).unwrap_or("-");
    let mut out = format!(
        "| target | carts/s | {ref_name} ÷ target | cart p50 ms | cart p99 ms | server CPU ms/cart | confirmed | confirms refused (expired) | confirmed after expiry | units held 1 s after last expiry | units lost | units oversold | holds leaked | check |\n"
    );
    out.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n");
    for (r, c) in carts {
        let ratio = match &reference {
            Some((_, base)) if c.carts_s > 0.0 => format!("{:.1}×", base / c.carts_s),
            _ => "-".into(),
        };
        let k = &c.check;
        let verdict = match (r.check.ok, k.anomalies.is_empty()) {
            (false, _) => "FAILED",
            (true, true) => "ok",
            (true, false) => "ok (anomalies reported, design allows them)",
        };
        out.push_str(&format!(
            "| {} | {:.0} | {} | {:.2} | {:.2} | {:.3} | {} | {} ({}) | {} | {}{} | {} | {} | {} | {} |\n",
            r.target,
            c.carts_s,
            ratio,
            c.cart_latency_us.p50 as f64 / 1000.0,
            c.cart_latency_us.p99 as f64 / 1000.0,
            c.server_cpu_ms_per_cart,
            c.confirmed,
            c.confirm_refused.values().sum::<u64>(),
            c.confirm_refused.get("expired").copied().unwrap_or(0),
            k.holds_confirmed_after_expiry,
            c.units_held_after_last_expiry,
            match c.released_after_last_expiry_ms {
                Some(ms) if c.units_held_after_last_expiry > 0 => {
                    format!(" (all back {:.1} s after)", ms as f64 / 1000.0)
                }
                _ => String::new(),
            },
            k.units_lost,
            k.units_oversold,
            k.holds_leaked,
            verdict
        ));
    }
    out
}

const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

/// Registers a TrueType font for plot labels; false if none is installed.
fn ensure_font() -> bool {
    static FONT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FONT.get_or_init(|| {
        for path in FONT_PATHS {
            if let Ok(bytes) = std::fs::read(path) {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        false
    })
}

/// `<target>-<workload>-latency.png` and `-throughput.png`. Skipped (with the reason returned)
/// when no font is installed.
pub fn write_plots(dir: &Path, run: &RunResult) -> anyhow::Result<Option<String>> {
    if !ensure_font() {
        return Ok(Some(format!(
            "no plots: no TrueType font found at {FONT_PATHS:?} (apt-get install fonts-dejavu-core)"
        )));
    }
    let stem = format!("{}-{}", run.target, run.workload);
    let seconds = run.timeline.len().max(1) as u64;

    let path = dir.join(format!("{stem}-latency.png"));
    {
        let root = BitMapBackend::new(&path, (900, 480)).into_drawing_area();
        root.fill(&WHITE)?;
        let max_ms = run
            .timeline
            .iter()
            .map(|s| s.p999_us as f64 / 1000.0)
            .fold(0.1, f64::max)
            * 1.1;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!(
                    "{} {}: latency percentiles per second",
                    run.target, run.workload
                ),
                ("sans-serif", 20),
            )
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(0u64..seconds, 0f64..max_ms)?;
        chart
            .configure_mesh()
            .x_desc("second")
            .y_desc("latency (ms)")
            .draw()?;
        for (label, color, pick) in [
            (
                "p50",
                BLUE,
                (|s: &crate::runner::Second| s.p50_us) as fn(&crate::runner::Second) -> u64,
            ),
            ("p99", GREEN, |s| s.p99_us),
            ("p99.9", RED, |s| s.p999_us),
        ] {
            chart
                .draw_series(LineSeries::new(
                    run.timeline
                        .iter()
                        .map(|s| (s.second, pick(s) as f64 / 1000.0)),
                    color.stroke_width(2),
                ))?
                .label(label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        }
        chart
            .configure_series_labels()
            .border_style(BLACK)
            .background_style(WHITE.mix(0.8))
            .draw()?;
        root.present()?;
    }

    let path = dir.join(format!("{stem}-throughput.png"));
    {
        let root = BitMapBackend::new(&path, (900, 480)).into_drawing_area();
        root.fill(&WHITE)?;
        let max_ops = run.timeline.iter().map(|s| s.ops).max().unwrap_or(1) as f64 * 1.1 + 1.0;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!("{} {}: operations per second", run.target, run.workload),
                ("sans-serif", 20),
            )
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(70)
            .build_cartesian_2d(0u64..seconds, 0f64..max_ops)?;
        chart
            .configure_mesh()
            .x_desc("second")
            .y_desc("ops/s")
            .draw()?;
        chart.draw_series(LineSeries::new(
            run.timeline.iter().map(|s| (s.second, s.ops as f64)),
            BLUE.stroke_width(2),
        ))?;
        root.present()?;
    }
    Ok(None)
}
