//! The register checker gives the expected verdict on all 102 real Jepsen etcd histories
//! shipped with porcupine (`../shared/testdata/porcupine-etcd`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use ordo_jepsen::{history, porcupine, register};

fn testdata() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/testdata/porcupine-etcd")
}

#[test]
fn every_etcd_history_gets_its_expected_verdict() {
    let dir = testdata();
    let expected = std::fs::read_to_string(dir.join("expected.txt"))
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.join("expected.txt").display()));
    let mut checked = 0;
    let mut slowest = Duration::ZERO;
    for line in expected.lines().filter(|l| !l.trim().is_empty()) {
        let (num, verdict) = line.split_once(' ').expect("NNN true|false");
        let want = verdict.trim() == "true";
        let text = std::fs::read_to_string(dir.join(format!("etcd_{num:0>3}.log"))).unwrap();
        let events = porcupine::parse(&text).unwrap();
        let ops = history::pair(&events).unwrap();
        let started = Instant::now();
        let verdicts = register::check(&ops).unwrap();
        slowest = slowest.max(started.elapsed());
        let got = verdicts
            .iter()
            .all(|v| v.verdict == register::Verdict::Linearizable);
        assert!(
            verdicts
                .iter()
                .all(|v| v.verdict != register::Verdict::Unknown),
            "history {num}: search cut off"
        );
        assert_eq!(got, want, "history {num}: expected linearizable = {want}");
        checked += 1;
    }
    assert_eq!(checked, 102);
    eprintln!("102 histories checked; slowest took {slowest:?}");
}
