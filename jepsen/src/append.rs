//! Elle's list-append checker.
//!
//! Transactions (`f = "txn"`) are lists of micro-ops `["append", k, v]` and `["r", k, list]`.
//! Every append to a key is unique, so a read's list names exactly which transactions wrote
//! before it, in order. From the reads we infer each key's version order (the longest read;
//! every other read must be a prefix of it), then a dependency graph between transactions:
//! `ww` (one append followed by the next in a key's version order), `wr` (a read saw the
//! append), `rw` (a read did not see the next append), plus `process` (a process's successive
//! transactions) and `realtime` (one finished before the other began) edges. A cycle is an
//! anomaly: only ww edges is G0, ww and wr is G1c, exactly one rw is G-single, more is G2;
//! a cycle that needs process or realtime edges gets the `-process` or `-realtime` suffix.
//! Non-cycle anomalies: `incompatible-order` (two reads that are not prefixes of each other),
//! `internal` (a read inconsistent with the transaction's own earlier reads and appends),
//! `G1a` (a read saw an aborted transaction's append), `G1b` (a read saw a transaction's
//! intermediate append), `garbage-read` (a read saw a value nobody appended).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde_json::Value;

use crate::history::{EventType, Operation, Process};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Edge {
    Ww,
    Wr,
    Rw,
    Process,
    Realtime,
}

impl Edge {
    fn name(self) -> &'static str {
        match self {
            Edge::Ww => "ww",
            Edge::Wr => "wr",
            Edge::Rw => "rw",
            Edge::Process => "process",
            Edge::Realtime => "realtime",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Anomaly {
    /// `G0`, `G1c`, `G-single`, `G2` (with `-process` / `-realtime`), `G1a`, `G1b`,
    /// `incompatible-order`, `internal`, `garbage-read`.
    pub kind: String,
    /// What explains it; for a cycle, `T3 -ww(x)-> T5 -rw(y)-> T3` with operation indexes.
    pub explanation: String,
}

#[derive(Clone, Debug)]
enum Mop {
    Append(String, String),
    Read(String, Option<Vec<String>>),
}

struct Txn {
    op: usize,
    process: Process,
    completion: Option<EventType>,
    mops: Vec<Mop>,
    invoke: u64,
    complete: u64,
}

fn canon(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn parse_mops(value: &Value, what: &str) -> Result<Vec<Mop>, String> {
    let list = value
        .as_array()
        .ok_or_else(|| format!("{what}: a txn's value is a list of micro-ops"))?;
    list.iter()
        .map(|m| {
            let m = m
                .as_array()
                .filter(|m| m.len() == 3)
                .ok_or_else(|| format!("{what}: micro-op {m} is not [f, k, v]"))?;
            match m[0].as_str() {
                Some("append") => Ok(Mop::Append(canon(&m[1]), canon(&m[2]))),
                Some("r") => Ok(Mop::Read(
                    canon(&m[1]),
                    m[2].as_array().map(|l| l.iter().map(canon).collect()),
                )),
                _ => Err(format!("{what}: unknown micro-op {}", m[0])),
            }
        })
        .collect()
}

/// Anomalies shown per kind, at most.
const EXAMPLES_MAX: usize = 20;

pub struct Report {
    pub txns: usize,
    pub anomalies: Vec<Anomaly>,
    /// Anomalies found per kind (exact, even past the examples shown).
    pub counts: BTreeMap<String, usize>,
}

impl Report {
    fn add(&mut self, kind: &str, explanation: String) {
        let count = self.counts.entry(kind.to_string()).or_default();
        *count += 1;
        if *count <= EXAMPLES_MAX {
            self.anomalies.push(Anomaly {
                kind: kind.to_string(),
                explanation,
            });
        }
    }
}

pub fn check(ops: &[Operation]) -> Result<Report, String> {
    let mut txns = Vec::new();
    for (i, op) in ops.iter().enumerate().filter(|(_, op)| op.f == "txn") {
        let what = format!("operation {i} (event {})", op.invoke_index);
        // A completed ok txn carries its reads; otherwise the invocation says what it tried.
        let value = if op.is_ok() {
            &op.complete_value
        } else {
            &op.invoke_value
        };
        txns.push(Txn {
            op: i,
            process: op.process.clone(),
            completion: op.completion,
            mops: parse_mops(value, &what)?,
            invoke: op.invoke_index,
            complete: op.complete_index,
        });
    }
    let mut report = Report {
        txns: txns.len(),
        anomalies: Vec::new(),
        counts: BTreeMap::new(),
    };
    let ok = |t: &Txn| t.completion == Some(EventType::Ok);

    // Who appended what: (key, value) -> (txn, is that txn's last append to the key).
    let mut writer: BTreeMap<(String, String), (usize, bool)> = BTreeMap::new();
    for (ti, t) in txns.iter().enumerate() {
        let mut last_of: BTreeMap<&str, &str> = BTreeMap::new();
        for m in &t.mops {
            if let Mop::Append(k, v) = m {
                last_of.insert(k, v);
            }
        }
        for m in &t.mops {
            if let Mop::Append(k, v) = m {
                let last = last_of.get(k.as_str()) == Some(&v.as_str());
                if writer.insert((k.clone(), v.clone()), (ti, last)).is_some() {
                    return Err(format!(
                        "value {v} is appended to key {k} more than once; appends must be unique"
                    ));
                }
            }
        }
    }

    // Reads of committed transactions, per key.
    let mut reads: BTreeMap<String, Vec<(usize, Vec<String>)>> = BTreeMap::new();
    for (ti, t) in txns.iter().enumerate().filter(|(_, t)| ok(t)) {
        for m in &t.mops {
            if let Mop::Read(k, Some(list)) = m {
                reads.entry(k.clone()).or_default().push((ti, list.clone()));
            }
        }
    }
    let label = |ti: usize| match &txns[ti].process {
        Process::Client(p) => format!("T{}[p{p}]", txns[ti].op),
        Process::Named(p) => format!("T{}[{p}]", txns[ti].op),
    };

    // Version orders, incompatible orders, garbage, G1a, G1b.
    let mut order: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, rs) in &reads {
        let longest = rs
            .iter()
            .map(|(_, l)| l)
            .max_by_key(|l| l.len())
            .cloned()
            .unwrap_or_default();
        for (ti, l) in rs {
            if longest[..l.len()] != l[..] {
                report.add(
                    "incompatible-order",
                    format!(
                        "key {k}: {} read {l:?}, not a prefix of {longest:?}",
                        label(*ti)
                    ),
                );
            }
            for v in l {
                match writer.get(&(k.clone(), v.clone())) {
                    None => report.add(
                        "garbage-read",
                        format!("key {k}: {} read {v}, which nobody appended", label(*ti)),
                    ),
                    Some(&(w, _)) if txns[w].completion == Some(EventType::Fail) => report.add(
                        "G1a",
                        format!(
                            "key {k}: {} read {v}, appended by aborted {}",
                            label(*ti),
                            label(w)
                        ),
                    ),
                    _ => {}
                }
            }
            if let Some(v) = l.last() {
                if let Some(&(w, false)) = writer.get(&(k.clone(), v.clone())) {
                    if w != *ti {
                        report.add(
                            "G1b",
                            format!(
                                "key {k}: {} read {v}, an intermediate append of {}",
                                label(*ti),
                                label(w)
                            ),
                        );
                    }
                }
            }
        }
        order.insert(k.clone(), longest);
    }

    // Internal consistency: a read within a transaction agrees with its own prior ops.
    for (ti, t) in txns.iter().enumerate().filter(|(_, t)| ok(t)) {
        let mut known: BTreeMap<&str, Option<Vec<String>>> = BTreeMap::new();
        let mut mine: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for m in &t.mops {
            match m {
                Mop::Append(k, v) => mine.entry(k).or_default().push(v.clone()),
                Mop::Read(k, Some(l)) => {
                    let appended = mine.remove(k.as_str()).unwrap_or_default();
                    let consistent = match known.get(k.as_str()) {
                        Some(Some(before)) => {
                            let mut expected = before.clone();
                            expected.extend(appended.iter().cloned());
                            *l == expected
                        }
                        _ => l.ends_with(&appended),
                    };
                    if !consistent {
                        report.add(
                            "internal",
                            format!(
                                "key {k}: {} read {l:?} after its own appends {appended:?}",
                                label(ti)
                            ),
                        );
                    }
                    known.insert(k, Some(l.clone()));
                }
                Mop::Read(_, None) => {}
            }
        }
    }

    // The graph: committed txns, and indeterminate ones whose appends were seen.
    let seen: BTreeSet<usize> = reads
        .iter()
        .flat_map(|(k, rs)| {
            rs.iter()
                .flat_map(move |(_, l)| l.iter().map(move |v| (k.clone(), v.clone())))
        })
        .filter_map(|kv| writer.get(&kv).map(|&(w, _)| w))
        .collect();
    let in_graph = |ti: usize| {
        ok(&txns[ti]) || (txns[ti].completion != Some(EventType::Fail) && seen.contains(&ti))
    };
    let mut edges: BTreeMap<usize, Vec<(usize, Edge, String)>> = BTreeMap::new();
    let add = |edges: &mut BTreeMap<usize, Vec<(usize, Edge, String)>>,
               a: usize,
               b: usize,
               e: Edge,
               k: &str| {
        if a != b && in_graph(a) && in_graph(b) {
            edges.entry(a).or_default().push((b, e, k.to_string()));
        }
    };
    for (k, versions) in &order {
        let w = |v: &String| writer.get(&(k.clone(), v.clone())).map(|&(t, _)| t);
        for pair in versions.windows(2) {
            if let (Some(a), Some(b)) = (w(&pair[0]), w(&pair[1])) {
                add(&mut edges, a, b, Edge::Ww, k);
            }
        }
        for (reader, l) in &reads[k] {
            if let Some(a) = l.last().and_then(w) {
                add(&mut edges, a, *reader, Edge::Wr, k);
            }
            if let Some(b) = versions.get(l.len()).and_then(w) {
                add(&mut edges, *reader, b, Edge::Rw, k);
            }
        }
    }
    // Process order.
    let mut by_process: BTreeMap<&Process, Vec<usize>> = BTreeMap::new();
    for (ti, t) in txns.iter().enumerate() {
        by_process.entry(&t.process).or_default().push(ti);
    }
    for list in by_process.values() {
        let mut list: Vec<usize> = list.iter().copied().filter(|&t| in_graph(t)).collect();
        list.sort_by_key(|&t| txns[t].invoke);
        for pair in list.windows(2) {
            add(&mut edges, pair[0], pair[1], Edge::Process, "");
        }
    }
    // Real time, as a frontier: at a transaction's invocation, every transaction on the frontier
    // (completed, not yet followed by another completed one) precedes it.
    let mut points: Vec<(u64, bool, usize)> = Vec::new();
    for (ti, t) in txns.iter().enumerate().filter(|(ti, _)| in_graph(*ti)) {
        points.push((t.invoke, true, ti));
        if t.complete != u64::MAX {
            points.push((t.complete, false, ti));
        }
    }
    points.sort();
    let mut frontier: BTreeSet<usize> = BTreeSet::new();
    let mut preds: BTreeMap<usize, BTreeSet<usize>> = BTreeMap::new();
    for (_, is_invoke, ti) in points {
        if is_invoke {
            for &p in &frontier {
                add(&mut edges, p, ti, Edge::Realtime, "");
            }
            preds.insert(ti, frontier.clone());
        } else {
            for p in preds.remove(&ti).unwrap_or_default() {
                frontier.remove(&p);
            }
            frontier.insert(ti);
        }
    }

    // Cycles, weakest explanation first, data edges before process and real-time edges.
    let mut explained: BTreeSet<usize> = BTreeSet::new();
    for (suffix, allowed) in [
        ("", &[Edge::Ww, Edge::Wr, Edge::Rw][..]),
        (
            "-process",
            &[Edge::Ww, Edge::Wr, Edge::Rw, Edge::Process][..],
        ),
        (
            "-realtime",
            &[Edge::Ww, Edge::Wr, Edge::Rw, Edge::Process, Edge::Realtime][..],
        ),
    ] {
        for scc in sccs(&edges, allowed) {
            if scc.len() < 2 || scc.iter().any(|t| explained.contains(t)) {
                continue;
            }
            if let Some((kind, cycle)) = classify(&edges, &scc, allowed) {
                let text = cycle
                    .iter()
                    .map(|(a, e, k, _)| {
                        let key = if k.is_empty() {
                            String::new()
                        } else {
                            format!("({k})")
                        };
                        format!("{} -{}{key}->", label(*a), e.name())
                    })
                    .collect::<Vec<_>>()
                    .join(" ");
                report.add(
                    &format!("{kind}{suffix}"),
                    format!("{text} {}", label(cycle[0].0)),
                );
                explained.extend(scc);
            }
        }
    }
    Ok(report)
}

type Cycle = Vec<(usize, Edge, String, usize)>;

/// Strongly connected components over the allowed edge kinds (Tarjan, iterative).
fn sccs(
    edges: &BTreeMap<usize, Vec<(usize, Edge, String)>>,
    allowed: &[Edge],
) -> Vec<BTreeSet<usize>> {
    let nodes: BTreeSet<usize> = edges
        .iter()
        .flat_map(|(a, out)| std::iter::once(*a).chain(out.iter().map(|(b, _, _)| *b)))
        .collect();
    let succ = |n: usize| -> Vec<usize> {
        edges
            .get(&n)
            .map(|out| {
                out.iter()
                    .filter(|(_, e, _)| allowed.contains(e))
                    .map(|(b, _, _)| *b)
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut index: BTreeMap<usize, usize> = BTreeMap::new();
    let mut low: BTreeMap<usize, usize> = BTreeMap::new();
    let mut on_stack: BTreeSet<usize> = BTreeSet::new();
    let mut stack: Vec<usize> = Vec::new();
    let mut out = Vec::new();
    let mut counter = 0;
    for &root in &nodes {
        if index.contains_key(&root) {
            continue;
        }
        // (node, successors, next successor position)
        let mut work: Vec<(usize, Vec<usize>, usize)> = vec![(root, succ(root), 0)];
        index.insert(root, counter);
        low.insert(root, counter);
        counter += 1;
        stack.push(root);
        on_stack.insert(root);
        while let Some((n, ss, pos)) = work.last_mut() {
            if *pos < ss.len() {
                let m = ss[*pos];
                *pos += 1;
                if let std::collections::btree_map::Entry::Vacant(slot) = index.entry(m) {
                    slot.insert(counter);
                    low.insert(m, counter);
                    counter += 1;
                    stack.push(m);
                    on_stack.insert(m);
                    let s = succ(m);
                    work.push((m, s, 0));
                } else if on_stack.contains(&m) {
                    let l = low[n].min(index[&m]);
                    low.insert(*n, l);
                }
            } else {
                let n = *n;
                work.pop();
                if let Some((parent, _, _)) = work.last() {
                    let l = low[parent].min(low[&n]);
                    low.insert(*parent, l);
                }
                if low[&n] == index[&n] {
                    let mut comp = BTreeSet::new();
                    while let Some(m) = stack.pop() {
                        on_stack.remove(&m);
                        comp.insert(m);
                        if m == n {
                            break;
                        }
                    }
                    out.push(comp);
                }
            }
        }
    }
    out
}

/// A path from `from` to `to` inside `scc` using only `kinds`, by BFS.
fn path(
    edges: &BTreeMap<usize, Vec<(usize, Edge, String)>>,
    scc: &BTreeSet<usize>,
    kinds: &[Edge],
    from: usize,
    to: usize,
) -> Option<Cycle> {
    let mut prev: BTreeMap<usize, (usize, Edge, String)> = BTreeMap::new();
    let mut queue = VecDeque::from([from]);
    let mut visited = BTreeSet::from([from]);
    while let Some(n) = queue.pop_front() {
        for (m, e, k) in edges.get(&n).into_iter().flatten() {
            if !kinds.contains(e) || !scc.contains(m) {
                continue;
            }
            if *m == to {
                let mut hops = vec![(n, *e, k.clone(), *m)];
                let mut cur = n;
                while cur != from {
                    let (p, pe, pk) = prev[&cur].clone();
                    hops.push((p, pe, pk, cur));
                    cur = p;
                }
                hops.reverse();
                return Some(hops);
            }
            if visited.insert(*m) {
                prev.insert(*m, (n, *e, k.clone()));
                queue.push_back(*m);
            }
        }
    }
    None
}

/// The weakest anomaly a cycle in `scc` shows, with the cycle.
fn classify(
    edges: &BTreeMap<usize, Vec<(usize, Edge, String)>>,
    scc: &BTreeSet<usize>,
    allowed: &[Edge],
) -> Option<(&'static str, Cycle)> {
    let extra: Vec<Edge> = allowed
        .iter()
        .copied()
        .filter(|e| matches!(e, Edge::Process | Edge::Realtime))
        .collect();
    let with = |base: &[Edge]| -> Vec<Edge> {
        base.iter().copied().chain(extra.iter().copied()).collect()
    };
    for (kind, kinds) in [
        ("G0", with(&[Edge::Ww])),
        ("G1c", with(&[Edge::Ww, Edge::Wr])),
    ] {
        for &n in scc {
            if let Some(c) = path(edges, scc, &kinds, n, n) {
                return Some((kind, c));
            }
        }
    }
    // G-single: one rw edge a -> b closed by a path b -> a without rw.
    let no_rw = with(&[Edge::Ww, Edge::Wr]);
    for &a in scc {
        for (b, e, k) in edges.get(&a).into_iter().flatten() {
            if *e == Edge::Rw && scc.contains(b) {
                if let Some(mut back) = path(edges, scc, &no_rw, *b, a) {
                    back.insert(0, (a, Edge::Rw, k.clone(), *b));
                    return Some(("G-single", back));
                }
            }
        }
    }
    for &n in scc {
        if let Some(c) = path(edges, scc, allowed, n, n) {
            return Some(("G2", c));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{pair, Event};
    use serde_json::json;

    /// Each txn: (process, micro-ops as invoked, micro-ops as completed, completion type);
    /// txns run one after another unless `concurrent` interleaves all invocations first.
    fn run(txns: &[(u64, Value, &str)], concurrent: bool) -> Report {
        let mut events = Vec::new();
        let mut push = |p: u64, kind: &str, value: &Value| {
            let i = events.len() as u64;
            events.push(Event {
                index: i,
                time_ns: i,
                process: Process::Client(p),
                kind: serde_json::from_value(json!(kind)).unwrap(),
                f: "txn".into(),
                value: value.clone(),
                key: None,
            });
        };
        let invoke_value = |v: &Value| -> Value {
            Value::Array(
                v.as_array()
                    .unwrap()
                    .iter()
                    .map(|m| {
                        if m[0] == "r" {
                            json!(["r", m[1], null])
                        } else {
                            m.clone()
                        }
                    })
                    .collect(),
            )
        };
        if concurrent {
            for (p, v, _) in txns {
                push(*p, "invoke", &invoke_value(v));
            }
            for (p, v, kind) in txns {
                push(*p, kind, v);
            }
        } else {
            for (p, v, kind) in txns {
                push(*p, "invoke", &invoke_value(v));
                push(*p, kind, v);
            }
        }
        check(&pair(&events).unwrap()).unwrap()
    }

    fn kinds(r: &Report) -> Vec<String> {
        r.counts.keys().cloned().collect()
    }

    #[test]
    fn a_serial_history_is_valid() {
        let r = run(
            &[
                (0, json!([["append", "x", 1], ["r", "x", [1]]]), "ok"),
                (1, json!([["append", "x", 2], ["append", "y", 1]]), "ok"),
                (0, json!([["r", "x", [1, 2]], ["r", "y", [1]]]), "ok"),
                (1, json!([["append", "y", 9]]), "fail"),
                (0, json!([["r", "y", [1]]]), "ok"),
            ],
            false,
        );
        assert!(r.anomalies.is_empty(), "{:?}", r.anomalies);
    }

    #[test]
    fn g0_write_cycle() {
        // T1 and T2 append to x and y; reads show x: T1 then T2, y: T2 then T1.
        let r = run(
            &[
                (1, json!([["append", "x", 1], ["append", "y", 1]]), "ok"),
                (2, json!([["append", "x", 2], ["append", "y", 2]]), "ok"),
                (3, json!([["r", "x", [1, 2]], ["r", "y", [2, 1]]]), "ok"),
            ],
            true,
        );
        assert!(kinds(&r).contains(&"G0".to_string()), "{:?}", r.anomalies);
    }

    #[test]
    fn g1c_circular_information_flow() {
        // T1 reads T2's append and T2 reads T1's.
        let r = run(
            &[
                (1, json!([["append", "x", 1], ["r", "y", [1]]]), "ok"),
                (2, json!([["append", "y", 1], ["r", "x", [1]]]), "ok"),
            ],
            true,
        );
        assert!(kinds(&r).contains(&"G1c".to_string()), "{:?}", r.anomalies);
    }

    #[test]
    fn g_single_read_skew() {
        // T3 sees T1's x but not its y: T3 -rw-> T1 -wr-> T3.
        let r = run(
            &[
                (1, json!([["append", "x", 1], ["append", "y", 1]]), "ok"),
                (3, json!([["r", "x", [1]], ["r", "y", []]]), "ok"),
                (4, json!([["r", "y", [1]]]), "ok"),
            ],
            true,
        );
        assert!(
            kinds(&r).contains(&"G-single".to_string()),
            "{:?}",
            r.anomalies
        );
    }

    #[test]
    fn g2_write_skew() {
        // Each reads the other's key empty, then appends to its own.
        let r = run(
            &[
                (1, json!([["r", "y", []], ["append", "x", 1]]), "ok"),
                (2, json!([["r", "x", []], ["append", "y", 1]]), "ok"),
                (3, json!([["r", "x", [1]], ["r", "y", [1]]]), "ok"),
            ],
            true,
        );
        assert!(kinds(&r).contains(&"G2".to_string()), "{:?}", r.anomalies);
    }

    #[test]
    fn stale_reads_across_real_time_are_g_single_realtime() {
        // T1 commits x=1; T2 starts after and reads x empty: only real time makes this wrong.
        let r = run(
            &[
                (1, json!([["append", "x", 1]]), "ok"),
                (2, json!([["r", "x", []]]), "ok"),
                (3, json!([["r", "x", [1]]]), "ok"),
            ],
            false,
        );
        assert!(
            kinds(&r).contains(&"G-single-realtime".to_string()),
            "{:?}",
            r.anomalies
        );
    }

    #[test]
    fn aborted_intermediate_incompatible_internal_and_garbage_reads() {
        let r = run(
            &[
                (1, json!([["append", "x", 1]]), "fail"),
                (2, json!([["append", "y", 1], ["append", "y", 2]]), "ok"),
                (3, json!([["r", "x", [1]], ["r", "y", [1]]]), "ok"),
                (4, json!([["append", "z", 1]]), "ok"),
                (5, json!([["append", "z", 2]]), "ok"),
                (6, json!([["r", "z", [1, 2]]]), "ok"),
                (7, json!([["r", "z", [2]]]), "ok"),
                (8, json!([["append", "w", 5], ["r", "w", [3]]]), "ok"),
            ],
            true,
        );
        let k = kinds(&r);
        for wanted in [
            "G1a",
            "G1b",
            "incompatible-order",
            "internal",
            "garbage-read",
        ] {
            assert!(
                k.contains(&wanted.to_string()),
                "{wanted} missing: {:?}",
                r.anomalies
            );
        }
    }
}
