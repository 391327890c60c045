//! The run's pictures: `latency.png` (every operation's latency against when it started, by
//! outcome) and `throughput.png` (completions per second, by outcome), each with the nemesis's
//! fault periods shaded.

use std::collections::BTreeMap;
use std::path::Path;

use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

use crate::history::{Event, EventType, Process};

/// A fault period: (kind, start s, end s).
type Period = (String, f64, f64);

const FONT_FILES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

/// Loads a TrueType font for labels once; false when none is installed.
fn font_loaded() -> bool {
    static LOADED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *LOADED.get_or_init(|| {
        FONT_FILES.iter().any(|file| {
            std::fs::read(file).is_ok_and(|bytes| {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok()
            })
        })
    })
}

fn seconds(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// Fault periods from the nemesis events: `F` opens one, `heal-F` closes it; one still open
/// at the end runs to the last event.
fn periods(events: &[Event]) -> Vec<Period> {
    let end = events.last().map(|e| seconds(e.time_ns)).unwrap_or(0.0);
    let mut open: Vec<(String, f64)> = Vec::new();
    let mut out = Vec::new();
    for e in events.iter().filter(|e| e.process.is_nemesis()) {
        let t = seconds(e.time_ns);
        match e.f.strip_prefix("heal-") {
            Some(kind) => {
                if let Some(i) = open.iter().position(|(k, _)| k == kind) {
                    let (k, start) = open.remove(i);
                    out.push((k, start, t));
                }
            }
            None => open.push((e.f.clone(), t)),
        }
    }
    out.extend(open.into_iter().map(|(k, start)| (k, start, end)));
    out
}

fn fault_color(kind: &str) -> RGBColor {
    match kind {
        "partition" => RGBColor(255, 170, 170),
        "kill" => RGBColor(200, 200, 200),
        "pause" => RGBColor(255, 215, 150),
        "clock" => RGBColor(170, 210, 255),
        _ => RGBColor(200, 170, 255),
    }
}

/// (start s, latency ms, outcome) of every completed client operation.
fn latencies(events: &[Event]) -> Vec<(f64, f64, EventType)> {
    let mut started: BTreeMap<&Process, u64> = BTreeMap::new();
    let mut out = Vec::new();
    for e in events {
        if matches!(e.process, Process::Named(_)) {
            continue;
        }
        match e.kind {
            EventType::Invoke => {
                started.insert(&e.process, e.time_ns);
            }
            kind => {
                if let Some(t0) = started.remove(&e.process) {
                    let ms = e.time_ns.saturating_sub(t0) as f64 / 1e6;
                    out.push((seconds(t0), ms, kind));
                }
            }
        }
    }
    out
}

const OUTCOMES: [(EventType, &str, RGBColor); 3] = [
    (EventType::Ok, "ok", RGBColor(30, 90, 200)),
    (EventType::Fail, "fail", RGBColor(230, 140, 0)),
    (EventType::Info, "info (unknown)", RGBColor(200, 0, 0)),
];

/// Writes `latency.png` and `throughput.png` into `dir`. Returns why not, when no font is
/// installed (plotters needs one for the labels).
pub fn write(dir: &Path, title: &str, events: &[Event]) -> anyhow::Result<Option<String>> {
    if !font_loaded() {
        return Ok(Some(format!(
            "no plots: no TrueType font at {FONT_FILES:?} (apt-get install fonts-dejavu-core)"
        )));
    }
    let faults = periods(events);
    let points = latencies(events);
    let x_max = events
        .last()
        .map(|e| seconds(e.time_ns))
        .unwrap_or(1.0)
        .max(1.0);

    {
        let path = dir.join("latency.png");
        let root = BitMapBackend::new(&path, (1000, 500)).into_drawing_area();
        root.fill(&WHITE)?;
        let y_max = points.iter().map(|p| p.1).fold(1.0, f64::max) * 1.2;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!("{title}: latency (shaded: faults)"),
                ("sans-serif", 18),
            )
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..x_max, (0.1f64..y_max).log_scale())?;
        chart
            .configure_mesh()
            .x_desc("seconds")
            .y_desc("latency (ms)")
            .draw()?;
        shade(&mut chart, &faults, 0.1, y_max)?;
        for (kind, label, color) in OUTCOMES {
            chart
                .draw_series(
                    points
                        .iter()
                        .filter(|p| p.2 == kind)
                        .map(|p| Circle::new((p.0, p.1.max(0.1)), 2, color.filled())),
                )?
                .label(label)
                .legend(move |(x, y)| Circle::new((x + 8, y), 3, color.filled()));
        }
        legend(&mut chart)?;
        root.present()?;
    }

    {
        let path = dir.join("throughput.png");
        let root = BitMapBackend::new(&path, (1000, 500)).into_drawing_area();
        root.fill(&WHITE)?;
        let buckets = x_max.ceil() as usize + 1;
        let mut per_second: BTreeMap<EventType, Vec<u32>> = BTreeMap::new();
        for e in events
            .iter()
            .filter(|e| !matches!(e.process, Process::Named(_)))
        {
            if e.kind != EventType::Invoke {
                let counts = per_second.entry(e.kind).or_insert_with(|| vec![0; buckets]);
                counts[(seconds(e.time_ns) as usize).min(buckets - 1)] += 1;
            }
        }
        let y_max = per_second.values().flatten().copied().max().unwrap_or(1) as f64 * 1.2;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!("{title}: completions per second (shaded: faults)"),
                ("sans-serif", 18),
            )
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..x_max, 0f64..y_max)?;
        chart
            .configure_mesh()
            .x_desc("seconds")
            .y_desc("operations / s")
            .draw()?;
        shade(&mut chart, &faults, 0.0, y_max)?;
        for (kind, label, color) in OUTCOMES {
            let Some(counts) = per_second.get(&kind) else {
                continue;
            };
            chart
                .draw_series(LineSeries::new(
                    counts
                        .iter()
                        .enumerate()
                        .map(|(s, &n)| (s as f64 + 0.5, n as f64)),
                    color.stroke_width(2),
                ))?
                .label(label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        }
        legend(&mut chart)?;
        root.present()?;
    }
    Ok(None)
}

fn legend<'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, BitMapBackend<'a>, CT>,
) -> anyhow::Result<()> {
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.85))
        .draw()?;
    Ok(())
}

/// Shades each fault period across the chart, in its kind's colour, labelled once per kind.
fn shade<'a, Y: Ranged<ValueType = f64>>(
    chart: &mut ChartContext<'a, BitMapBackend<'a>, Cartesian2d<RangedCoordf64, Y>>,
    faults: &[Period],
    y_min: f64,
    y_max: f64,
) -> anyhow::Result<()> {
    let mut labelled = std::collections::BTreeSet::new();
    for (kind, start, end) in faults {
        let color = fault_color(kind);
        let series = chart.draw_series(std::iter::once(Rectangle::new(
            [(*start, y_min), (*end, y_max)],
            color.mix(0.45).filled(),
        )))?;
        if labelled.insert(kind.clone()) {
            series.label(kind.clone()).legend(move |(x, y)| {
                Rectangle::new([(x, y - 5), (x + 16, y + 5)], color.filled())
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn event(index: u64, t_ms: u64, process: Process, kind: EventType, f: &str) -> Event {
        Event {
            index,
            time_ns: t_ms * 1_000_000,
            process,
            kind,
            f: f.into(),
            value: Value::Null,
            key: None,
        }
    }

    #[test]
    fn fault_periods_pair_starts_with_heals_and_latencies_pair_per_process() {
        let n = || Process::Named("nemesis".into());
        let events = vec![
            event(0, 0, Process::Client(1), EventType::Invoke, "read"),
            event(1, 1000, n(), EventType::Info, "kill"),
            event(2, 1500, Process::Client(1), EventType::Ok, "read"),
            event(3, 3000, n(), EventType::Info, "heal-kill"),
            event(4, 4000, n(), EventType::Info, "partition"),
            event(5, 5000, Process::Client(2), EventType::Invoke, "write"),
            event(6, 5250, Process::Client(2), EventType::Info, "write"),
        ];
        assert_eq!(
            periods(&events),
            vec![("kill".into(), 1.0, 3.0), ("partition".into(), 4.0, 5.25)]
        );
        assert_eq!(
            latencies(&events),
            vec![(0.0, 1500.0, EventType::Ok), (5.0, 250.0, EventType::Info)]
        );
    }
}
