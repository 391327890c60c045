//! `ordo-jepsen check --workload register --history FILE`: exit 0 valid, 1 anomalies, 2 could
//! not check, on histories in the JSONL format.

use std::io::Write;
use std::process::Command;

fn run(history: &str, workload: &str) -> (i32, String, String) {
    let mut file = tempfile_path();
    file.1.write_all(history.as_bytes()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ordo-jepsen"))
        .args(["check", "--workload", workload, "--history"])
        .arg(&file.0)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&file.0);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn tempfile_path() -> (std::path::PathBuf, std::fs::File) {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("ordo-jepsen-{}-{n}.jsonl", std::process::id()));
    let file = std::fs::File::create(&path).unwrap();
    (path, file)
}

const VALID: &str = r#"
{"index": 0, "time_ns": 10, "process": 0, "type": "invoke", "f": "write", "value": 1, "key": "a"}
{"index": 1, "time_ns": 11, "process": "nemesis", "type": "info", "f": "partition", "value": "isolate n1"}
{"index": 2, "time_ns": 20, "process": 0, "type": "ok", "f": "write", "value": 1, "key": "a"}
{"index": 3, "time_ns": 30, "process": 1, "type": "invoke", "f": "read", "value": null, "key": "a"}
{"index": 4, "time_ns": 40, "process": 1, "type": "ok", "f": "read", "value": 1, "key": "a"}
{"index": 5, "time_ns": 50, "process": 1, "type": "invoke", "f": "read", "value": null, "key": "b"}
{"index": 6, "time_ns": 60, "process": 1, "type": "ok", "f": "read", "value": null, "key": "b"}
"#;

const STALE: &str = r#"
{"index": 0, "time_ns": 10, "process": 0, "type": "invoke", "f": "write", "value": 1, "key": 7}
{"index": 1, "time_ns": 20, "process": 0, "type": "ok", "f": "write", "value": 1, "key": 7}
{"index": 2, "time_ns": 30, "process": 0, "type": "invoke", "f": "cas", "value": [1, 2], "key": 7}
{"index": 3, "time_ns": 40, "process": 0, "type": "ok", "f": "cas", "value": [1, 2], "key": 7}
{"index": 4, "time_ns": 50, "process": 1, "type": "invoke", "f": "read", "value": null, "key": 7}
{"index": 5, "time_ns": 60, "process": 1, "type": "ok", "f": "read", "value": 1, "key": 7}
"#;

const WRITE_SKEW: &str = r#"
{"index": 0, "time_ns": 1, "process": 1, "type": "invoke", "f": "txn", "value": [["r", "y", null], ["append", "x", 1]]}
{"index": 1, "time_ns": 2, "process": 2, "type": "invoke", "f": "txn", "value": [["r", "x", null], ["append", "y", 1]]}
{"index": 2, "time_ns": 3, "process": 1, "type": "ok", "f": "txn", "value": [["r", "y", []], ["append", "x", 1]]}
{"index": 3, "time_ns": 4, "process": 2, "type": "ok", "f": "txn", "value": [["r", "x", []], ["append", "y", 1]]}
{"index": 4, "time_ns": 5, "process": 3, "type": "invoke", "f": "txn", "value": [["r", "x", null], ["r", "y", null]]}
{"index": 5, "time_ns": 6, "process": 3, "type": "ok", "f": "txn", "value": [["r", "x", [1]], ["r", "y", [1]]]}
"#;

#[test]
fn append_histories_report_cycles_with_their_explanation() {
    let (code, out, _) = run(WRITE_SKEW, "append");
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("G2: "), "{out}");
    assert!(
        out.contains("-rw(x)->") && out.contains("-rw(y)->"),
        "{out}"
    );
    let serial = WRITE_SKEW.replace(r#"["r", "x", []]"#, r#"["r", "x", [1]]"#);
    let (code, out, _) = run(&serial, "append");
    assert_eq!(code, 0, "{out}");
}

#[test]
fn valid_anomalous_and_malformed_histories() {
    let (code, out, _) = run(VALID, "register");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("valid: 2 keys"), "{out}");

    let (code, out, _) = run(STALE, "register");
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("key 7: NOT linearizable"), "{out}");

    let (code, _, err) = run("{\"index\": 0, \"nonsense\": true}\n", "register");
    assert_eq!(code, 2);
    assert!(err.contains("history line 1"), "{err}");

    let (code, _, err) = run(VALID, "ledger");
    assert_eq!(code, 2);
    assert!(err.contains("unknown workload \"ledger\""), "{err}");
}

const BANK: &str = r#"
{"index": 0, "time_ns": 1, "process": "setup", "type": "ok", "f": "init", "value": {"total": 20}}
{"index": 1, "time_ns": 2, "process": 0, "type": "invoke", "f": "transfer", "value": {"from": [1, 1], "to": [2, 1], "amount": 3}}
{"index": 2, "time_ns": 3, "process": 1, "type": "invoke", "f": "read", "value": null}
{"index": 3, "time_ns": 4, "process": 0, "type": "ok", "f": "transfer", "value": {"from": [1, 1], "to": [2, 1], "amount": 3}}
{"index": 4, "time_ns": 5, "process": 1, "type": "ok", "f": "read", "value": [[1, 1, 7], [2, 1, 13]]}
"#;

#[test]
fn bank_histories_must_keep_the_total_in_every_read() {
    let (code, out, _) = run(BANK, "bank");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("valid: 1 reads, initial total 20"), "{out}");
    // A read that saw the debit but not the credit: half a transfer.
    let torn = BANK.replace("[2, 1, 13]", "[2, 1, 10]");
    let (code, out, _) = run(&torn, "bank");
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("wrong-total: event 4: read total 17, expected 20"),
        "{out}"
    );
}

const INVENTORY: &str = r#"
{"index": 0, "time_ns": 1, "process": "setup", "type": "ok", "f": "init", "value": {"stock": [[1, 1, 5]]}}
{"index": 1, "time_ns": 2, "process": 0, "type": "invoke", "f": "order", "value": {"request_id": "a", "lines": [[1, 1, 2]]}}
{"index": 2, "time_ns": 3, "process": 0, "type": "ok", "f": "order", "value": {"request_id": "a", "lines": [[1, 1, 2]]}}
{"index": 3, "time_ns": 4, "process": 1, "type": "invoke", "f": "order", "value": {"request_id": "b", "lines": [[1, 1, 1]]}}
{"index": 4, "time_ns": 5, "process": 1, "type": "info", "f": "order", "value": {"request_id": "b", "lines": [[1, 1, 1]]}}
{"index": 5, "time_ns": 6, "process": 2, "type": "invoke", "f": "final-read", "value": null}
{"index": 6, "time_ns": 7, "process": 2, "type": "ok", "f": "final-read", "value": {"stock": [[1, 1, 2]], "orders": ["a", "b"]}}
"#;

#[test]
fn inventory_histories_account_for_every_unit_and_order() {
    let (code, out, _) = run(INVENTORY, "inventory");
    assert_eq!(code, 0, "{out}");
    // The acknowledged order is gone and its units came back: lost, and the stock is off.
    let lost = INVENTORY
        .replace(r#""orders": ["a", "b"]"#, r#""orders": ["b"]"#)
        .replace("[[1, 1, 2]], \"orders\"", "[[1, 1, 4]], \"orders\"");
    let (code, out, _) = run(&lost, "inventory");
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("lost-order: order a was acknowledged but is missing"),
        "{out}"
    );
    let phantom = INVENTORY.replace(r#""orders": ["a", "b"]"#, r#""orders": ["a", "b", "z"]"#);
    let (code, out, _) = run(&phantom, "inventory");
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("phantom-order"), "{out}");
}

#[test]
fn bank_reads_may_also_be_jepsen_style_account_maps() {
    let history = r#"
{"index": 0, "time_ns": 1, "process": 0, "type": "invoke", "f": "read", "value": null}
{"index": 1, "time_ns": 2, "process": 0, "type": "ok", "f": "read", "value": {"a": 10, "b": 10}}
{"index": 2, "time_ns": 3, "process": 0, "type": "invoke", "f": "read", "value": null}
{"index": 3, "time_ns": 4, "process": 0, "type": "ok", "f": "read", "value": {"a": 25, "b": -5}}
"#;
    let (code, out, _) = run(history, "bank");
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("negative-balance: event 3: account b at -5"),
        "{out}"
    );
    let (code, out, _) = run(&history.replace("-5", "-5.5"), "bank");
    assert_eq!(code, 2, "{out}");
}
