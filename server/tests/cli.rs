//! The `ordo` client subcommands as a user runs them: output, JSON fields and exit codes.

mod common;

use common::*;
use serde_json::Value;

fn json_of(stdout: &str) -> Value {
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("not one JSON object ({e}): {stdout}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_commands_print_json_and_exit_with_documented_codes() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path(), &[]);
    seed(&node.client().await, 5).await;
    let ep = node.endpoint.as_str();

    eprintln!("--- phase: stock");
    let (code, out, _) = ordo_cli(&["stock", "1", "2", "--endpoint", ep, "--json"]);
    assert_eq!(code, 0);
    let stock = json_of(&out);
    assert_eq!(
        (
            stock["on_hand"].as_i64(),
            stock["reserved"].as_i64(),
            stock["available"].as_i64()
        ),
        (Some(5), Some(0), Some(5))
    );

    eprintln!("--- phase: a committed order exits 0");
    let (code, out, _) = ordo_cli(&[
        "order",
        "--line",
        "1:2:2",
        "--line",
        "2:2:1",
        "--request-id",
        "cli-1",
        "--endpoint",
        ep,
        "--json",
    ]);
    assert_eq!(code, 0, "{out}");
    let order = json_of(&out);
    assert_eq!(order["status"], "committed");
    assert_eq!(order["request_id"], "cli-1");
    assert!(order["order_id"].as_u64().unwrap() > 0);
    assert!(order["epoch"].as_u64().unwrap() > 0);
    assert_eq!(order["lines"][0]["allocated"], 2);
    assert_eq!(order["lines"][1]["dc_id"], 2);

    eprintln!("--- phase: get-order finds it");
    let id = order["order_id"].as_u64().unwrap().to_string();
    let (code, out, _) = ordo_cli(&["get-order", &id, "--endpoint", ep, "--json"]);
    assert_eq!(code, 0);
    assert_eq!(json_of(&out)["request_id"], "cli-1");

    eprintln!("--- phase: a rejected order exits 3 and says why");
    let (code, out, _) = ordo_cli(&["order", "--line", "1:2:4", "--endpoint", ep, "--json"]);
    assert_eq!(code, 3, "{out}");
    let rejected = json_of(&out);
    assert_eq!(rejected["status"], "rejected");
    assert_eq!(
        rejected["reason"],
        "insufficient stock: dc 1 sku 2 available 3 requested 4"
    );
    let (code, out, _) = ordo_cli(&["order", "--line", "1:2:4", "--partial", "--endpoint", ep]);
    assert_eq!(code, 0, "partial takes the 3 left: {out}");
    assert!(out.contains("3 of 4 allocated"), "{out}");

    eprintln!("--- phase: restock, with a negative delta");
    let (code, out, _) = ordo_cli(&["restock", "1", "2", "-1", "--endpoint", ep, "--json"]);
    assert_eq!(code, 3, "nothing left to remove: {out}");
    let (code, out, _) = ordo_cli(&["restock", "1", "2", "7", "--endpoint", ep, "--json"]);
    assert_eq!(code, 0);
    assert_eq!(json_of(&out)["on_hand"], 7);

    eprintln!("--- phase: transfer: applied exits 0, rejected 3, both rows shown");
    let (code, out, _) = ordo_cli(&["transfer", "2", "1", "2", "3", "--endpoint", ep, "--json"]);
    assert_eq!(code, 0, "{out}");
    let moved = json_of(&out);
    assert_eq!(moved["applied"], true);
    assert_eq!(moved["from"]["on_hand"], 4);
    assert_eq!(moved["to"]["dc_id"], 2);
    let (code, out, _) = ordo_cli(&["transfer", "2", "1", "2", "5", "--endpoint", ep, "--json"]);
    assert_eq!(code, 3, "{out}");
    assert_eq!(
        json_of(&out)["reason"],
        "insufficient stock: dc 1 sku 2 available 4 requested 5"
    );

    eprintln!("--- phase: errors exit 1");
    let (code, out, _) = ordo_cli(&["order", "--line", "1:2:0", "--endpoint", ep, "--json"]);
    assert_eq!(code, 1);
    assert_eq!(json_of(&out)["error"]["code"], "INVALID_ARGUMENT");
    let (code, _, err) = ordo_cli(&["stock", "42", "1", "--endpoint", ep]);
    assert_eq!(code, 1);
    assert!(err.contains("NOT_FOUND: get_stock: unknown dc 42"), "{err}");
    let (code, _, err) = ordo_cli(&["order", "--line", "1-2-3", "--endpoint", ep]);
    assert_eq!(code, 1, "usage errors exit 1 like any error");
    assert!(err.contains("expected DC:SKU:QTY"), "{err}");
    let (code, _, err) = ordo_cli(&["status", "--endpoint", "http://127.0.0.1:1"]);
    assert_eq!(code, 1);
    assert!(err.contains("cannot connect"), "{err}");

    eprintln!("--- phase: status");
    let (code, out, _) = ordo_cli(&["status", "--endpoint", ep, "--json"]);
    assert_eq!(code, 0);
    let status = json_of(&out);
    assert_eq!(status["node_id"], 1);
    assert_eq!(status["role"], "leader");
    assert_eq!(status["leader_id"], 1);
    assert!(status["applied_epoch"].as_u64().unwrap() > 0);
    assert_eq!(status["state_hash"].as_str().unwrap().len(), 64);
}

#[test]
fn the_store_cache_flag_is_checked_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    for bad in ["0", "15", "1048577"] {
        let mut args = SINGLE_NODE_ARGS.to_vec();
        args.extend(["--data-dir", data, "--store-cache-mb", bad]);
        let (code, _, err) = ordo_cli(&args);
        assert_ne!(code, 0, "--store-cache-mb {bad} was taken");
        assert!(
            err.contains("--store-cache-mb must be 16 to 1048576"),
            "{bad}: {err}"
        );
    }
}

#[test]
fn config_check_names_unknown_keys_and_prints_sources() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("node.toml");
    std::fs::write(
        &file,
        "node_id = 3\nlisten = \"127.0.0.1:50051\"\n[tuning]\nepoch_ms = 7\n",
    )
    .unwrap();
    let (code, out, err) = ordo_cli(&["config", "check", file.to_str().unwrap(), "--json"]);
    assert_eq!(code, 0, "{err}");
    let report = json_of(&out);
    assert_eq!(report["valid"], true);
    let setting = |key: &str| {
        report["settings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["key"] == key)
            .unwrap_or_else(|| panic!("{key} missing: {out}"))
            .clone()
    };
    assert_eq!(setting("node_id")["value"], 3);
    assert_eq!(setting("node_id")["source"], "file");
    assert_eq!(setting("data_dir")["source"], "flag");
    assert_eq!(setting("tuning.epoch_ms")["value"], 7);
    assert_eq!(setting("tuning.epoch_ms")["source"], "file");
    assert_eq!(setting("tuning.queue_txns_max")["value"], 100_000);
    assert_eq!(setting("tuning.queue_txns_max")["source"], "default");
    assert_eq!(setting("peer_listen")["value"], "127.0.0.1:51051");

    // A misspelt key: exit 1, the key and the line named.
    std::fs::write(&file, "node_id = 3\n[tuning]\nepoch_msec = 7\n").unwrap();
    let (code, out, err) = ordo_cli(&["config", "check", file.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(
        err.contains("unknown field `epoch_msec`") && err.contains("line 3"),
        "{err}"
    );
    let (code, out, _) = ordo_cli(&["config", "check", file.to_str().unwrap(), "--json"]);
    assert_eq!(code, 1);
    let report = json_of(&out);
    assert_eq!(report["valid"], false);
    assert!(report["error"].as_str().unwrap().contains("epoch_msec"));
}

#[test]
fn log_format_json_writes_one_object_per_line() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(BIN)
        .args(SINGLE_NODE_ARGS)
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--log-format", "json"])
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut serving = None;
    for line in BufReader::new(stderr).lines().map_while(Result::ok) {
        let record: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("a log line that is not JSON ({e}): {line}"));
        assert!(record["timestamp"].is_string() && record["level"].is_string());
        if record["fields"]["message"] == "serving" {
            serving = Some(record);
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let serving = serving.expect("no `serving` line");
    assert_eq!(serving["level"], "INFO");
    assert_eq!(serving["fields"]["node_id"], 1);
}
