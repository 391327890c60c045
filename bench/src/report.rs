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
        "| target | workload | clients | ops/s | p50 ms | p99 ms | p99.9 ms | server CPU s | server CPU µs/op | {ref_name} ÷ target | check |\n"
    ));
    out.push_str("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|\n");
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
            "| {} | {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.1} | {:.0} | {} | {} |\n",
            r.target,
            r.workload,
            r.clients,
            r.throughput_ops_s,
            r.latency_us.p50 as f64 / 1000.0,
            r.latency_us.p99 as f64 / 1000.0,
            r.latency_us.p999 as f64 / 1000.0,
            r.server_cpu_s,
            r.server_cpu_us_per_op,
            ratio,
            check
        ));
    }
    if runs.iter().any(|r| r.dataset.is_some()) {
        out.push('\n');
        out.push_str(&dataset_table(runs));
    }
    if runs.iter().any(|r| r.snapshots.is_some()) {
        out.push('\n');
        out.push_str(&snapshot_table(runs));
    }
    if runs.iter().any(|r| r.cart.is_some()) {
        out.push('\n');
        out.push_str(&cart_table(runs));
    }
    if runs.iter().any(|r| r.nearby.is_some()) {
        out.push('\n');
        out.push_str(&nearby_table(runs));
    }
    if runs
        .iter()
        .any(|r| r.feed.as_ref().is_some_and(|f| f.price.is_none()))
    {
        out.push('\n');
        out.push_str(&feed_table(runs));
    }
    if runs
        .iter()
        .any(|r| r.feed.as_ref().is_some_and(|f| f.price.is_some()))
    {
        out.push('\n');
        out.push_str(&price_table(runs));
    }
    out
}

/// With `--snapshot-every`: the seconds a node was building a snapshot beside the quiet ones.
fn snapshot_table(runs: &[RunResult]) -> String {
    let mut out = String::from(
        "| target | snapshot every (entries) | snapshots built | exports run again | seconds building / quiet | p50 ms quiet | p50 ms building | p99 ms quiet | p99 ms building | p99 building ÷ quiet |\n",
    );
    out.push_str("|---|---:|---:|---:|---|---:|---:|---:|---:|---:|\n");
    for r in runs {
        let Some(s) = &r.snapshots else { continue };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} / {} | {} | {} | {} | {} | {} |\n",
            r.target,
            s.every_entries,
            s.builds,
            s.export_restarts,
            s.seconds_building,
            s.seconds_quiet,
            ms(s.p50_us_quiet),
            ms(s.p50_us_building),
            ms(s.p99_us_quiet),
            ms(s.p99_us_building),
            match s.seconds_building {
                0 => "-".to_string(),
                _ => format!("{:.2}", s.p99_ratio),
            },
        ));
    }
    out
}

fn ms(us: u64) -> String {
    format!("{:.2}", us as f64 / 1000.0)
}

fn check_cell(r: &RunResult) -> String {
    if r.check.ok {
        let errors = r.check.errors.values().sum::<u64>();
        match &r.feed {
            Some(f) => format!(
                "ok ({} × {} watchers once each{}{})",
                f.check.expected_per_watcher,
                f.watchers,
                // NOTIFY carries no position to check the order against.
                if f.design == "notify" {
                    ""
                } else {
                    ", in order"
                },
                if errors > 0 {
                    format!("; {errors} orders of unknown outcome")
                } else {
                    String::new()
                }
            ),
            None => "ok".into(),
        }
    } else {
        format!(
            "FAILED: {}",
            r.check.problems.first().cloned().unwrap_or_default()
        )
    }
}

/// The feed workload's table: orders beside the watchers (and against the same target and
/// design with 0 watchers in the same run), what the watchers received per second, their lag,
/// and each against PostgreSQL's first design with as many watchers in the same run.
pub fn feed_table(runs: &[RunResult]) -> String {
    let feeds: Vec<(&RunResult, &crate::feed::FeedReport)> = runs
        .iter()
        .filter_map(|r| r.feed.as_ref().map(|f| (r, f)))
        .filter(|(_, f)| f.price.is_none())
        .collect();
    let find = |target: &str, design: Option<&str>, watchers: usize| {
        feeds.iter().find(|(r, f)| {
            r.target == target && design.is_none_or(|d| f.design == d) && f.watchers == watchers
        })
    };
    let ratio = |x: f64, base: Option<f64>| match base {
        Some(base) if base > 0.0 => format!("{:.2}×", x / base),
        _ => "-".into(),
    };
    let mut out = String::from(
        "| target | feed | watchers | orders/s | ÷ 0 watchers | ÷ postgres | order p50 ms | order p99 ms | events/s delivered | per watcher (min–max) | ÷ postgres | lag p50 ms | lag p99 ms | catch-up s | server CPU µs/order | harness CPU µs/order | check |\n",
    );
    out.push_str(
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---|\n",
    );
    for (r, f) in &feeds {
        let idle = find(&r.target, Some(&f.design), 0).map(|(b, _)| b.throughput_ops_s);
        let pg = find("postgres", None, f.watchers);
        let (lag50, lag99) = match &f.lag_us {
            Some(l) => (ms(l.p50), ms(l.p99)),
            None => ("-".into(), "-".into()),
        };
        out.push_str(&format!(
            "| {} | {} | {} | {:.0} | {} | {} | {} | {} | {:.0} | {:.0} ({:.0}–{:.0}) | {} | {} | {} | {} | {:.0} | {:.0} | {} |\n",
            r.target,
            f.design,
            f.watchers,
            r.throughput_ops_s,
            ratio(r.throughput_ops_s, idle),
            ratio(r.throughput_ops_s, pg.map(|(b, _)| b.throughput_ops_s)),
            ms(r.latency_us.p50),
            ms(r.latency_us.p99),
            f.events_s_total,
            f.events_s_per_watcher_mean,
            f.events_s_per_watcher_min,
            f.events_s_per_watcher_max,
            if f.watchers > 0 {
                ratio(f.events_s_total, pg.map(|(_, p)| p.events_s_total))
            } else {
                "-".into()
            },
            lag50,
            lag99,
            f.catch_up_ms_max
                .map_or("-".into(), |c| format!("{:.1}", c as f64 / 1000.0)),
            f.server_cpu_us_per_order,
            f.harness_cpu_us_per_order,
            check_cell(r)
        ));
    }
    out
}

/// The price-latency table: a price change from the writer's answer (and from its send, and
/// from the target's commit stamp) to each watcher's receipt; send → heard against
/// PostgreSQL's first design with as many watchers in the same run.
pub fn price_table(runs: &[RunResult]) -> String {
    let prices: Vec<(
        &RunResult,
        &crate::feed::FeedReport,
        &crate::feed::PriceFigures,
    )> = runs
        .iter()
        .filter_map(|r| {
            let f = r.feed.as_ref()?;
            Some((r, f, f.price.as_ref()?))
        })
        .collect();
    let baseline = |watchers: usize| {
        prices
            .iter()
            .find(|(r, f, _)| r.target == "postgres" && f.watchers == watchers)
            .map(|(_, _, p)| p)
    };
    let ratio_if = |heard: bool, x: u64, base: Option<u64>| match base {
        Some(base) if heard && base > 0 => format!("{:.2}×", x as f64 / base as f64),
        _ => "-".into(),
    };
    let mut out = String::from(
        "| target | feed | watchers | orders/s | price changes | set p50 ms | set p99 ms | answer → heard p50 ms | p99 ms | send → heard p50 ms | p99 ms | p50 ÷ postgres | p99 ÷ postgres | commit stamp → heard p50 ms | p99 ms | heard before the answer | server CPU µs/order | check |\n",
    );
    out.push_str(
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n",
    );
    for (r, f, p) in &prices {
        let base = baseline(f.watchers).filter(|b| b.notifications > 0);
        // Without watchers nothing was heard: no latency to show.
        let heard = |us: u64| {
            if p.notifications > 0 {
                ms(us)
            } else {
                "-".into()
            }
        };
        out.push_str(&format!(
            "| {} | {} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} of {} | {:.0} | {} |\n",
            r.target,
            f.design,
            f.watchers,
            r.throughput_ops_s,
            p.changes,
            ms(p.set_latency_us.p50),
            ms(p.set_latency_us.p99),
            heard(p.answer_to_heard_us.p50),
            heard(p.answer_to_heard_us.p99),
            heard(p.send_to_heard_us.p50),
            heard(p.send_to_heard_us.p99),
            ratio_if(p.notifications > 0, p.send_to_heard_us.p50, base.map(|b| b.send_to_heard_us.p50)),
            ratio_if(p.notifications > 0, p.send_to_heard_us.p99, base.map(|b| b.send_to_heard_us.p99)),
            heard(p.commit_to_heard_us.p50),
            heard(p.commit_to_heard_us.p99),
            p.heard_before_answer,
            p.notifications,
            f.server_cpu_us_per_order,
            check_cell(r)
        ));
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

/// The dataset each run was loaded with, how long loading took (through each target's own
/// bulk path), and the server's resident memory after the run.
pub fn dataset_table(runs: &[RunResult]) -> String {
    let mut out = String::from(
        "| target | stock rows | load s | server RSS MiB (every node) | RSS MiB per million rows |\n",
    );
    out.push_str("|---|---:|---:|---:|---:|\n");
    for r in runs {
        let Some(d) = &r.dataset else { continue };
        // Per million rows means something only where the rows are most of the memory.
        let per_million = match d.stock_rows >= 1_000_000 {
            true => format!("{:.0}", d.server_rss_mib * 1e6 / d.stock_rows as f64),
            false => "–".into(),
        };
        out.push_str(&format!(
            "| {} | {} | {:.1} | {:.0} | {per_million} |\n",
            r.target, d.stock_rows, d.load_s, d.server_rss_mib,
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
    // Feed runs of one target differ by design and watcher count.
    let stem = match &run.feed {
        Some(f) => format!(
            "{}-{}-{}-{}w",
            run.target, run.workload, f.design, f.watchers
        ),
        None => format!("{}-{}", run.target, run.workload),
    };
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
