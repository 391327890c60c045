//! One verdict for a history, whichever workload wrote it: what `ordo-jepsen check` prints and
//! what `ordo-jepsen run` puts in `results.json`.

use std::collections::BTreeMap;
use std::path::Path;

use crate::history::{self, Event};
use crate::{append, bank, inventory, register, watch_check};

pub const WORKLOADS: [&str; 5] = ["inventory", "bank", "append", "register", "watch"];

/// Exit codes of `check` and `run`.
pub const VALID: u8 = 0;
pub const ANOMALIES: u8 = 1;
pub const UNKNOWN: u8 = 2;

#[derive(Clone, Debug)]
pub struct Verdict {
    /// `Some(true)`: valid; `Some(false)`: anomalies found; `None`: could not be decided.
    pub valid: Option<bool>,
    /// Anomalies by kind (exact counts).
    pub counts: BTreeMap<String, usize>,
    /// Anomalies (and undecided parts) explained, a bounded number.
    pub examples: Vec<String>,
    /// One line: what was checked and the outcome.
    pub summary: String,
    /// Figures a checker reports beyond anomalies (the inventory checker's holds: operations by
    /// outcome, holds by final status and ended during faults; its nearby orders: by outcome,
    /// committed, split over several stores); empty for most.
    pub stats: BTreeMap<String, u64>,
}

impl Verdict {
    pub fn exit_code(&self) -> u8 {
        match self.valid {
            Some(true) => VALID,
            Some(false) => ANOMALIES,
            None => UNKNOWN,
        }
    }

    fn from_counts(counts: BTreeMap<String, usize>, undecided: bool) -> Option<bool> {
        if !counts.is_empty() {
            Some(false)
        } else if undecided {
            None
        } else {
            Some(true)
        }
    }
}

fn owned(counts: BTreeMap<&'static str, usize>) -> BTreeMap<String, usize> {
    counts
        .into_iter()
        .map(|(k, n)| (k.to_string(), n))
        .collect()
}

/// Checks a run: its history, and for `watch` the consumers' feed records in `run_dir`
/// ([`watch_check::load_feeds`]). What `ordo-jepsen run` and `check` both call.
pub fn check_run(workload: &str, events: &[Event], run_dir: &Path) -> anyhow::Result<Verdict> {
    let mut verdict = match workload {
        "watch" => check_watch(events, &watch_check::load_feeds(run_dir)?)?,
        _ => check(workload, events)?,
    };
    // What the hostile nemesis saw a node do wrong (a revoked token's stream served).
    let (counts, examples) = crate::hostile::check(events);
    if !counts.is_empty() {
        verdict.counts.extend(counts);
        verdict.examples.extend(examples);
        verdict.valid = Some(false);
        verdict.summary = format!(
            "{}; hostile nemesis: a revoked token served",
            verdict.summary
        );
    }
    Ok(verdict)
}

/// The `watch` workload: the inventory checker over its history, and the feed checker over
/// what every consumer received; one verdict with both's anomalies.
pub fn check_watch(events: &[Event], feeds: &[watch_check::Feed]) -> anyhow::Result<Verdict> {
    let mut verdict = check("inventory", events)?;
    let ops = history::pair(events)?;
    let report = watch_check::check(events, &ops, feeds).map_err(|e| anyhow::anyhow!(e))?;
    let undecided = verdict.valid.is_none() || !report.unchecked.is_empty();
    verdict.counts.extend(owned(report.counts.clone()));
    verdict.valid = Verdict::from_counts(verdict.counts.clone(), undecided);
    verdict.stats.extend(report.stats.clone());
    let stat = |k: &str| report.stats.get(k).copied().unwrap_or(0);
    let sum = |what: &str| -> u64 {
        feeds
            .iter()
            .filter(|f| f.name != watch_check::REFERENCE)
            .map(|f| stat(&format!("watch-{}-{what}", f.name)))
            .sum()
    };
    verdict.summary = format!(
        "{}; feed: {} consumers, {} events checked, {} node switches ({} errors, {} of them cut \
         offs after {} dawdles; {} stalls, {} stale, {} out of range), reference {} events \
         ({} of prices) through epoch {} ({} out of range), {} final subscriptions, {} nodes' \
         feeds starting after a snapshot: {}",
        verdict.summary,
        report.consumers,
        stat("watch-events"),
        sum("switches"),
        sum("errors"),
        sum("cut-off"),
        sum("dawdles"),
        sum("stalls"),
        sum("stale"),
        sum("out-of-range"),
        stat("watch-reference-events"),
        stat("watch-reference-price-events"),
        stat("watch-reference-covered"),
        stat("watch-reference-out-of-range"),
        stat("watch-final-subscriptions"),
        stat("watch-nodes-feed-after-snapshot"),
        if !report.counts.is_empty() {
            format!("anomalies {:?}", report.counts)
        } else if !report.unchecked.is_empty() {
            "partly unchecked".to_string()
        } else {
            "valid".to_string()
        }
    );
    verdict
        .examples
        .extend(report.anomalies.into_iter().chain(report.unchecked));
    Ok(verdict)
}

/// Checks a history of `workload`. Errors mean a malformed history (exit 2). (`watch` needs
/// its feed records too: [`check_run`].)
pub fn check(workload: &str, events: &[Event]) -> anyhow::Result<Verdict> {
    let ops = history::pair(events)?;
    let err = |e: String| anyhow::anyhow!(e);
    Ok(match workload {
        "register" => {
            let verdicts = register::check(&ops).map_err(err)?;
            let mut counts = BTreeMap::new();
            let mut examples = Vec::new();
            let mut undecided = false;
            for v in &verdicts {
                let key = v
                    .key
                    .as_ref()
                    .map(|k| k.to_string())
                    .unwrap_or_else(|| "-".into());
                match v.verdict {
                    register::Verdict::Linearizable => {}
                    register::Verdict::NotLinearizable { stuck_at } => {
                        *counts.entry("nonlinearizable-key".to_string()).or_default() += 1;
                        let op = &ops[stuck_at];
                        examples.push(format!(
                            "key {key}: NOT linearizable ({} operations); no order gets past {} {} \
                             by process {:?} (events {}..{})",
                            v.ops,
                            op.f,
                            op.invoke_value,
                            op.process,
                            op.invoke_index,
                            if op.complete_index == u64::MAX {
                                "open".to_string()
                            } else {
                                op.complete_index.to_string()
                            }
                        ));
                    }
                    register::Verdict::Unknown => {
                        undecided = true;
                        examples.push(format!(
                            "key {key}: unknown: the search passed {} states",
                            register::SEARCH_STATES_MAX
                        ));
                    }
                }
            }
            let summary = format!(
                "{} keys, {} operations: {}",
                verdicts.len(),
                ops.len(),
                if counts.is_empty() && !undecided {
                    "every key linearizable"
                } else if counts.is_empty() {
                    "some keys undecided"
                } else {
                    "NOT linearizable"
                }
            );
            Verdict {
                valid: Verdict::from_counts(counts.clone(), undecided),
                counts,
                examples,
                summary,
                stats: BTreeMap::new(),
            }
        }
        "append" => {
            let report = append::check(&ops).map_err(err)?;
            let examples = report
                .anomalies
                .iter()
                .map(|a| format!("{}: {}", a.kind, a.explanation))
                .collect();
            Verdict {
                valid: Verdict::from_counts(report.counts.clone(), false),
                summary: format!(
                    "{} transactions: {}",
                    report.txns,
                    if report.counts.is_empty() {
                        "no anomalies".to_string()
                    } else {
                        format!("anomalies {:?}", report.counts)
                    }
                ),
                counts: report.counts,
                examples,
                stats: BTreeMap::new(),
            }
        }
        "bank" => {
            let (report, _) = bank::check(events).map_err(err)?;
            let counts = owned(report.counts.clone());
            Verdict {
                valid: Verdict::from_counts(counts.clone(), report.reads == 0),
                summary: format!(
                    "{} reads, initial total {}: {}",
                    report.reads,
                    report
                        .total
                        .map(|t| t.to_string())
                        .unwrap_or_else(|| "-".into()),
                    if counts.is_empty() && report.reads > 0 {
                        "every read totals it".to_string()
                    } else if counts.is_empty() {
                        "no successful read to check".to_string()
                    } else {
                        format!("anomalies {counts:?}")
                    }
                ),
                counts,
                examples: report
                    .anomalies
                    .iter()
                    .map(|a| format!("{}: event {}: {}", a.kind, a.event_index, a.message))
                    .collect(),
                stats: BTreeMap::new(),
            }
        }
        "inventory" => {
            let report = inventory::check(events, &ops).map_err(err)?;
            let counts = owned(report.counts.clone());
            let undecided = !report.unchecked.is_empty();
            let hold_stat = |k: &str| report.holds.stats.get(k).copied().unwrap_or(0);
            let nearby_stat = |k: &str| report.nearby.stats.get(k).copied().unwrap_or(0);
            let mut stats = report.holds.stats.clone();
            stats.extend(report.nearby.stats.clone());
            Verdict {
                valid: Verdict::from_counts(counts.clone(), undecided),
                summary: format!(
                    "{} keys, {} acknowledged and {} indeterminate orders, {} nearby orders ({} \
                     committed, {} of them split over several DCs; {} rejected, {} \
                     indeterminate), {} holds ({} confirmed, {} cancelled, {} expired, {} live): \
                     {}",
                    report.keys,
                    report.orders_ok,
                    report.orders_indeterminate,
                    nearby_stat("nearby-ok")
                        + nearby_stat("nearby-fail")
                        + nearby_stat("nearby-info"),
                    nearby_stat("nearby-committed"),
                    nearby_stat("nearby-split"),
                    nearby_stat("nearby-fail"),
                    nearby_stat("nearby-info"),
                    report.holds.holds,
                    hold_stat("holds-confirmed"),
                    hold_stat("holds-cancelled"),
                    hold_stat("holds-expired"),
                    hold_stat("holds-live"),
                    if !counts.is_empty() {
                        format!("anomalies {counts:?}")
                    } else if undecided {
                        "some keys undecided".to_string()
                    } else {
                        "valid".to_string()
                    }
                ),
                counts,
                stats,
                examples: report
                    .anomalies
                    .into_iter()
                    .chain(report.unchecked)
                    .collect(),
            }
        }
        "watch" => anyhow::bail!(
            "the watch workload is checked with its consumers' feed records: give the history \
             in its run directory (history.jsonl beside watch/)"
        ),
        other => anyhow::bail!("unknown workload {other:?}: {}", WORKLOADS.join(", ")),
    })
}
