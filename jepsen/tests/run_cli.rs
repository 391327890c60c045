//! `ordo-jepsen run` end to end, without root: a 3-node cluster of real `ordo` processes under
//! the kill and clock nemeses, the bank workload, and under clock faults the inventory workload
//! with its reservations and nearby orders; under kills and pauses the watch workload's
//! change-feed consumers and price sets and subscriptions; then what the run directory holds.
//! (Partitions need root and iptables; `.ci/run` runs them.)

use std::path::PathBuf;
use std::process::Command;

fn ordo_bin() -> PathBuf {
    let me = PathBuf::from(env!("CARGO_BIN_EXE_ordo-jepsen"));
    let ordo = me.with_file_name("ordo");
    assert!(
        ordo.is_file(),
        "{} is missing: build it first (cargo test --workspace builds it; or cargo build --bin ordo)",
        ordo.display()
    );
    ordo
}

/// Held for a whole test: two runs at once would pick free ports from the same pool (a node
/// of one could take a port the other just found free) and share two cores' timing.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[test]
fn a_bank_run_under_kills_and_clock_faults_checks_out_and_writes_its_report() {
    let _serial = one_at_a_time();
    let out = tempfile::tempdir().unwrap();
    let run = Command::new(env!("CARGO_BIN_EXE_ordo-jepsen"))
        .args([
            "run",
            "--nodes",
            "3",
            "--time-limit",
            "8",
            "--workload",
            "bank",
            "--nemesis",
            "kill,clock",
            "--rate",
            "40",
            "--concurrency",
            "3",
            "--seed",
            "7",
            "--ordo-bin",
        ])
        .arg(ordo_bin())
        .arg("--out")
        .arg(out.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("bank on 3 nodes"), "{stdout}");

    let dirs: Vec<_> = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(dirs.len(), 1);
    let dir = &dirs[0];
    assert!(dir
        .file_name()
        .unwrap()
        .to_string_lossy()
        .starts_with("bank-"));
    for f in [
        "history.jsonl",
        "summary.txt",
        "nodes/n1.log",
        "nodes/n3.log",
    ] {
        assert!(dir.join(f).is_file(), "{f} missing");
    }
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("results.json")).unwrap()).unwrap();
    assert_eq!(results["valid"], true, "{results:#}");
    assert_eq!(results["replicas_agree"], true);
    assert!(results["anomaly_counts"].as_object().unwrap().is_empty());
    assert!(
        results["op_counts"]["read"]["ok"].as_u64().unwrap() > 0,
        "{results:#}"
    );
    assert!(results["op_counts"]["transfer"].is_object(), "{results:#}");
    // The 8 s leave room for exactly one fault, recorded with its heal.
    let faults = results["nemesis_events"].as_array().unwrap();
    assert_eq!(faults.len(), 2, "{faults:?}");
    assert!(["kill", "clock"].contains(&faults[0]["f"].as_str().unwrap()));

    // The history checks out on its own too.
    let check = Command::new(env!("CARGO_BIN_EXE_ordo-jepsen"))
        .args(["check", "--workload", "bank", "--history"])
        .arg(dir.join("history.jsonl"))
        .output()
        .unwrap();
    assert_eq!(check.status.code(), Some(0));
}

#[test]
fn an_inventory_run_with_holds_and_nearby_orders_checks_out_and_reads_them_all() {
    let _serial = one_at_a_time();
    let out = tempfile::tempdir().unwrap();
    let run = Command::new(env!("CARGO_BIN_EXE_ordo-jepsen"))
        .args([
            "run",
            "--nodes",
            "3",
            "--time-limit",
            "8",
            "--workload",
            "inventory",
            "--nemesis",
            "clock",
            "--rate",
            "40",
            "--concurrency",
            "3",
            "--seed",
            "7",
            "--ordo-bin",
        ])
        .arg(ordo_bin())
        .arg("--out")
        .arg(out.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(0), "{stdout}\n{stderr}");

    let dir = std::fs::read_dir(out.path())
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("results.json")).unwrap()).unwrap();
    assert_eq!(results["valid"], true, "{results:#}");
    assert!(
        results["op_counts"]["reserve"]["ok"].as_u64().unwrap() > 0,
        "{results:#}"
    );
    // Nearby orders committed, and the checker counted them.
    assert!(
        results["op_counts"]["nearby-order"]["ok"]
            .as_u64()
            .unwrap_or(0)
            > 0,
        "{results:#}"
    );
    // Every hold the run made ended, and the checker says how.
    let stats = &results["checker_stats"];
    let ended: u64 = ["holds-confirmed", "holds-cancelled", "holds-expired"]
        .iter()
        .map(|k| stats[k].as_u64().unwrap_or(0))
        .sum();
    assert!(ended > 0, "{results:#}");
    assert!(stats["holds-live"].is_null(), "{results:#}");
    // Holds filled from nearby stores (ReserveNearby) were made and checked like the others.
    assert!(
        stats["reserve-nearby-ok"].as_u64().unwrap_or(0) > 0,
        "{results:#}"
    );

    // The final read has every hold the history names, read by id (holds of reserves whose
    // answer was lost are found by listing, and counted too).
    let history = std::fs::read_to_string(dir.join("history.jsonl")).unwrap();
    let final_read: serde_json::Value = history
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|e| e["f"] == "final-read" && e["type"] == "ok")
        .unwrap();
    let holds = final_read["value"]["holds"].as_array().unwrap();
    assert!(
        !holds.is_empty() && holds.len() as u64 <= ended,
        "{final_read:#}"
    );
    assert!(
        holds.iter().all(|h| h["status"] != "not-found"),
        "{final_read:#}"
    );
    // It gives every committed order its lines: an acknowledged nearby order's are the stores
    // its answer named.
    let order_lines = &final_read["value"]["order_lines"];
    let mut nearby = 0;
    for e in history
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["f"] == "nearby-order" && e["type"] == "ok")
    {
        let listed = &order_lines[e["value"]["request_id"].as_str().unwrap()];
        let dcs = |rows: &serde_json::Value| -> Vec<u64> {
            let mut dcs: Vec<u64> = rows
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r[0].as_u64().unwrap())
                .collect();
            dcs.sort();
            dcs.dedup();
            dcs
        };
        assert_eq!(dcs(listed), dcs(&e["value"]["allocated"]), "{e:#}");
        nearby += 1;
    }
    assert!(nearby > 0);
}

#[test]
fn a_watch_run_under_kills_and_pauses_checks_every_consumers_feed() {
    let _serial = one_at_a_time();
    let out = tempfile::tempdir().unwrap();
    let run = Command::new(env!("CARGO_BIN_EXE_ordo-jepsen"))
        .args([
            "run",
            "--nodes",
            "3",
            "--time-limit",
            "8",
            "--workload",
            "watch",
            "--nemesis",
            "kill,pause",
            "--rate",
            "40",
            "--concurrency",
            "3",
            "--seed",
            "3",
            "--ordo-bin",
        ])
        .arg(ordo_bin())
        .arg("--out")
        .arg(out.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(0), "{stdout}\n{stderr}");

    let dir = std::fs::read_dir(out.path())
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    for f in [
        "consumer-1.jsonl",
        "consumer-2.jsonl",
        "consumer-3.jsonl",
        "reference.jsonl",
    ] {
        assert!(dir.join("watch").join(f).is_file(), "watch/{f} missing");
    }
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("results.json")).unwrap()).unwrap();
    assert_eq!(results["valid"], true, "{results:#}");
    // Every consumer received events (valid: each covered the final epoch, or the verdict
    // would be unknown).
    let stats = &results["checker_stats"];
    for c in 1..=3 {
        assert!(
            stats[format!("watch-consumer-{c}-events")]
                .as_u64()
                .unwrap()
                > 0,
            "{results:#}"
        );
    }
    // The pricing operations ran, and their PRICE events were checked.
    let acknowledged = |f: &str| results["op_counts"][f]["ok"].as_u64().unwrap_or(0);
    assert!(
        acknowledged("set-price") + acknowledged("set-prices") > 0,
        "{results:#}"
    );
    assert!(acknowledged("subscribe") > 0, "{results:#}");
    assert!(
        stats["watch-reference-price-events"].as_u64().unwrap_or(0) > 0,
        "{results:#}"
    );

    // The history checks out on its own, with the feed records beside it.
    let check = Command::new(env!("CARGO_BIN_EXE_ordo-jepsen"))
        .args(["check", "--workload", "watch", "--history"])
        .arg(dir.join("history.jsonl"))
        .output()
        .unwrap();
    assert_eq!(
        check.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
}

#[test]
fn a_watch_run_under_the_hostile_nemesis_revokes_its_token_mid_stream_and_cuts_an_oversize_epoch() {
    let _serial = one_at_a_time();
    let out = tempfile::tempdir().unwrap();
    let run = Command::new(env!("CARGO_BIN_EXE_ordo-jepsen"))
        .args([
            "run",
            "--nodes",
            "3",
            "--time-limit",
            "8",
            "--workload",
            "watch",
            "--nemesis",
            "hostile",
            "--rate",
            "30",
            "--concurrency",
            "3",
            "--seed",
            "5",
            // The oversize epoch's events (about 90 KB) past the node's message limit.
            "--server-arg=--message-bytes-max",
            "--server-arg=65536",
            "--ordo-bin",
        ])
        .arg(ordo_bin())
        .arg("--out")
        .arg(out.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(0), "{stdout}\n{stderr}");
    let dir = std::fs::read_dir(out.path())
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("results.json")).unwrap()).unwrap();
    // Valid: the consumers saw every event of the oversize epoch once, as the reference did.
    assert_eq!(results["valid"], true, "{results:#}");
    let faults = results["nemesis_events"].as_array().unwrap();
    assert_eq!(faults.len(), 2, "{faults:#?}");
    let (started, healed) = (&faults[0]["value"], &faults[1]["value"]);
    let burst = &started["oversize_epoch"];
    assert_eq!(burst["restocks_applied"], 1_000, "{started:#}");
    // The token was made, its streams opened, and every one of them ended after the
    // revocation, within the grace.
    assert!(healed["revocation_skipped"].is_null(), "{healed:#}");
    assert_eq!(healed["violations"], serde_json::json!([]), "{healed:#}");
    let ended = healed["revoked_token_streams"].as_array().unwrap();
    assert_eq!(ended.len(), 3, "{healed:#}");
    for e in ended {
        let e = e.as_str().unwrap();
        assert!(e.contains("after the revocation"), "{healed:#}");
    }
}
