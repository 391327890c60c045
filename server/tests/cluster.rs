//! A replicated cluster of real `ordo server` processes on loopback: orders through every
//! node, leader crashes, a wiped follower rebuilt from a snapshot, membership changes under
//! load, a paused leader, and read-your-writes across nodes. The tests run one at a time (they
//! share two cores and Raft timing).

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures::future::join_all;
use ordo_client::{v1, Client};

/// Held for a whole test: an async mutex, since each test has its own runtime.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_sell_exactly_the_stock_and_agree_on_the_hash() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let cluster = Cluster::start(3, 0, 10, &[]).await;
    let admin = cluster.client().await;
    admin.restock(1, 1, 40, None).await.unwrap();

    eprintln!("--- phase: 150 buyers spread over the three nodes order 1 of 50 units at once");
    let mut buyers = Vec::new();
    for i in 0..150 {
        let node = &cluster.nodes[i % 3];
        buyers.push(Client::connect(node.endpoint()).await.unwrap());
    }
    let calls = buyers
        .into_iter()
        .map(|c| tokio::spawn(async move { c.place_order(&[line(1, 1, 1)], false, None).await }));
    let results: Vec<_> = join_all(calls)
        .await
        .into_iter()
        .map(|r| r.unwrap().unwrap())
        .collect();
    assert_eq!(results.iter().filter(|r| committed(r)).count(), 50);

    eprintln!("--- phase: every node shows zero left and the same state hash");
    let epoch = results.iter().map(|r| r.epoch).max().unwrap();
    let agreed = cluster.wait_agreement(epoch, Duration::from_secs(20)).await;
    assert!(agreed >= epoch);
    for node in &cluster.nodes {
        let c = node.client().await;
        let raw = v1::GetStockRequest {
            dc_id: 1,
            sku: 1,
            consistency: v1::ReadConsistency::AtLeast as i32,
            at_least_epoch: epoch,
        };
        let stock = c.raw().get_stock(raw).await.unwrap().into_inner();
        assert_eq!(stock.on_hand, 0, "node {}", node.id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_leader_under_load_loses_nothing_and_applies_nothing_twice() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let mut cluster = Cluster::start(3, 0, 2_000, &[]).await;
    let client = cluster.client().await;
    let initial = total_on_hand(&client).await;
    let writers = Writers::start(cluster.endpoints(), 6, "kl").await;
    writers.wait_acked(200, Duration::from_secs(30)).await;

    let leader = cluster.leader(Duration::from_secs(10)).await;
    eprintln!(
        "--- phase: SIGKILL the leader (node {leader}) at {} acknowledged orders",
        writers.acked_count()
    );
    cluster.node(leader).kill9();
    let killed_at = Instant::now();
    let new_leader = cluster.leader(Duration::from_secs(10)).await;
    assert_ne!(new_leader, leader);
    eprintln!(
        "--- phase: node {new_leader} leads after {:?}",
        killed_at.elapsed()
    );
    let before = writers.acked_count();
    writers
        .wait_acked(before + 200, Duration::from_secs(30))
        .await;

    eprintln!("--- phase: the old leader restarts and catches up");
    cluster.node(leader).start();
    writers
        .wait_acked(writers.acked_count() + 100, Duration::from_secs(30))
        .await;
    let client = cluster.client().await;
    cluster.settle(writers, &client, initial).await;
}

/// Three nodes that snapshot every 100 entries, and one of the followers.
async fn snapshotting_cluster_and_a_follower() -> (Cluster, u64) {
    let cluster = Cluster::start(3, 0, 1_000, &["--snapshot-every", "100"]).await;
    let leader = cluster.leader(Duration::from_secs(10)).await;
    let follower = cluster
        .nodes
        .iter()
        .map(|n| n.id)
        .find(|&id| id != leader)
        .unwrap();
    (cluster, follower)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wiped_follower_is_rebuilt_from_a_snapshot() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let (mut cluster, follower) = snapshotting_cluster_and_a_follower().await;

    eprintln!("--- phase: SIGKILL follower {follower}, write well past the snapshot threshold");
    cluster.node(follower).kill9();
    let client = cluster.client().await;
    for i in 0..300u32 {
        client.restock(i % 4 + 1, i % 3 + 1, 1, None).await.unwrap();
    }

    eprintln!("--- phase: remove it, wipe it, start it empty, add it back, under load");
    let admin = client.clone().with_cluster_secret(TEST_SECRET);
    admin.remove_member(follower).await.unwrap();
    let initial = total_on_hand(&client).await;
    let live: Vec<String> = cluster
        .nodes
        .iter()
        .filter(|n| n.child.is_some())
        .map(|n| n.endpoint())
        .collect();
    let writers = Writers::start(live, 4, "wp").await;
    writers.wait_acked(100, Duration::from_secs(30)).await;
    cluster.node(follower).wipe();
    cluster.node(follower).start();
    let addr = cluster.node(follower).addr.clone();
    let peer = cluster.node(follower).peer_addr.clone();
    let members = admin.add_member_at(follower, addr, peer).await.unwrap();
    assert!(members
        .members
        .iter()
        .any(|m| m.node_id == follower && m.voter));
    writers
        .wait_acked(writers.acked_count() + 200, Duration::from_secs(30))
        .await;
    cluster.settle(writers, &client, initial).await;

    eprintln!("--- phase: it installed a snapshot and agrees with the others");
    let epoch = client.status().await.unwrap().applied_epoch;
    cluster.wait_agreement(epoch, Duration::from_secs(30)).await;
    let snapshot = cluster
        .node(follower)
        .data_dir
        .join("snapshots/current.snap");
    assert!(
        snapshot.exists(),
        "the rebuilt node has no snapshot: it did not catch up by one"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn growing_to_five_and_shrinking_to_three_under_load() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let mut cluster = Cluster::start(3, 2, 2_000, &[]).await;
    let client = cluster.client().await;
    let admin = client.clone().with_cluster_secret(TEST_SECRET);
    let initial = total_on_hand(&client).await;
    let writers = Writers::start(cluster.endpoints(), 4, "gs").await;
    writers.wait_acked(100, Duration::from_secs(30)).await;

    eprintln!("--- phase: add nodes 4 and 5 while orders flow");
    for id in [4u64, 5] {
        cluster.node(id).start();
        let addr = cluster.node(id).addr.clone();
        let peer = cluster.node(id).peer_addr.clone();
        admin.add_member_at(id, addr, peer).await.unwrap();
        writers
            .wait_acked(writers.acked_count() + 50, Duration::from_secs(30))
            .await;
    }
    let status = client.status().await.unwrap();
    assert_eq!(status.members.iter().filter(|m| m.voter).count(), 5);

    eprintln!("--- phase: remove nodes 4 and 5 again");
    for id in [4u64, 5] {
        admin.remove_member(id).await.unwrap();
        writers
            .wait_acked(writers.acked_count() + 50, Duration::from_secs(30))
            .await;
    }
    let status = client.status().await.unwrap();
    let voters: Vec<u64> = status
        .members
        .iter()
        .filter(|m| m.voter)
        .map(|m| m.node_id)
        .collect();
    assert_eq!(voters, vec![1, 2, 3]);
    for id in [4u64, 5] {
        cluster.node(id).kill9();
    }
    cluster.settle(writers, &client, initial).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_leader_loses_nothing_it_acknowledged() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let mut cluster = Cluster::start(3, 0, 2_000, &[]).await;
    let client = cluster.client().await;
    let initial = total_on_hand(&client).await;
    let writers = Writers::start(cluster.endpoints(), 6, "ps").await;
    writers.wait_acked(150, Duration::from_secs(30)).await;

    let leader = cluster.leader(Duration::from_secs(10)).await;
    eprintln!("--- phase: SIGSTOP the leader (node {leader}) past the election timeout");
    cluster.node(leader).pause();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = writers.acked_count();
    writers
        .wait_acked(before + 100, Duration::from_secs(30))
        .await;
    eprintln!("--- phase: SIGCONT; it steps down and catches up");
    cluster.node(leader).resume();
    writers
        .wait_acked(writers.acked_count() + 100, Duration::from_secs(30))
        .await;
    cluster.settle(writers, &client, initial).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_through_one_node_is_read_on_another() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let cluster = Cluster::start(3, 0, 10, &[]).await;
    let a = cluster.nodes[0].client().await;
    let b = cluster.nodes[2].client().await;
    for i in 1..=20 {
        let r = a.restock(2, 3, 1, None).await.unwrap();
        assert_eq!(r.on_hand, 10 + i);
        // AT_LEAST the epoch of the write, on another node.
        let raw = v1::GetStockRequest {
            dc_id: 2,
            sku: 3,
            consistency: v1::ReadConsistency::AtLeast as i32,
            at_least_epoch: a.highest_epoch(),
        };
        let seen = b.raw().get_stock(raw).await.unwrap().into_inner();
        assert_eq!(
            seen.on_hand,
            10 + i,
            "node 3 did not show the write made through node 1"
        );
        assert!(seen.epoch >= r.epoch);
    }
    eprintln!("--- phase: linearizable reads on a follower");
    let lin = cluster.nodes[1]
        .client()
        .await
        .with_consistency(ordo_client::Consistency::Linearizable);
    assert_eq!(lin.get_stock(2, 3).await.unwrap().on_hand, 30);
    eprintln!("--- phase: the client library carries its epoch itself");
    let ab = Client::connect_many(vec![
        cluster.nodes[0].endpoint(),
        cluster.nodes[1].endpoint(),
    ])
    .await
    .unwrap();
    ab.restock(2, 3, 5, None).await.unwrap();
    let other = cluster.nodes[2].client().await;
    let raw = v1::GetStockRequest {
        dc_id: 2,
        sku: 3,
        consistency: v1::ReadConsistency::Unspecified as i32,
        at_least_epoch: ab.highest_epoch(),
    };
    assert_eq!(
        other
            .raw()
            .get_stock(raw)
            .await
            .unwrap()
            .into_inner()
            .on_hand,
        35
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_init_twice_is_a_no_op_and_status_all_flags_a_dead_node() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let mut cluster = Cluster::start(3, 0, 5, &[]).await;
    let ep = cluster.nodes[1].endpoint();

    eprintln!("--- phase: cluster-init again, through another node");
    let (code, out, _) = ordo_cli(&["cluster-init", "--endpoint", &ep, "--json"]);
    assert_eq!(code, 0, "{out}");
    let init: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(init["initialized"], false);
    assert!(
        init["message"]
            .as_str()
            .unwrap()
            .contains("already initialised"),
        "{init}"
    );
    assert_eq!(init["members"].as_array().unwrap().len(), 3);

    eprintln!("--- phase: status --all agrees while all three run");
    let (code, out, _) = ordo_cli(&["status", "--all", "--endpoint", &ep, "--json"]);
    assert_eq!(code, 0, "{out}");
    let all: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(all["agree"], true);
    assert_eq!(all["nodes"].as_array().unwrap().len(), 3);
    for n in all["nodes"].as_array().unwrap() {
        for field in [
            "node_id",
            "role",
            "leader_id",
            "applied_epoch",
            "state_hash",
            "reachable",
        ] {
            assert!(!n[field].is_null(), "{field} missing in {n}");
        }
    }

    eprintln!("--- phase: a dead node makes status --all exit 1 and shows it unreachable");
    cluster.node(3).kill9();
    let (code, out, _) = ordo_cli(&["status", "--all", "--endpoint", &ep, "--json"]);
    assert_eq!(code, 1, "{out}");
    let all: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let dead = all["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node_id"] == 3)
        .unwrap()
        .clone();
    assert_eq!(dead["reachable"], false);
    assert_eq!(all["agree"], true, "the two live nodes still agree");
    let (_, human, _) = ordo_cli(&["status", "--all", "--endpoint", &ep]);
    assert!(human.contains("UNREACHABLE"), "{human}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_killed_while_it_installs_a_snapshot_catches_up_on_restart() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let (mut cluster, follower) = snapshotting_cluster_and_a_follower().await;

    eprintln!(
        "--- phase: SIGKILL follower {follower}; the log it needs is purged behind snapshots"
    );
    cluster.node(follower).kill9();
    let client = cluster.client().await;
    for i in 0..600u32 {
        client.restock(i % 4 + 1, i % 3 + 1, 1, None).await.unwrap();
    }

    eprintln!("--- phase: restart it and SIGKILL it again while it catches up, several times");
    for delay_ms in [0u64, 20, 60, 150, 400] {
        cluster.node(follower).start();
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        cluster.node(follower).kill9();
    }

    eprintln!("--- phase: a last restart, no operator: it catches up and agrees");
    cluster.node(follower).start();
    let epoch = client.status().await.unwrap().applied_epoch;
    cluster.wait_agreement(epoch, Duration::from_secs(60)).await;
    let snapshot = cluster
        .node(follower)
        .data_dir
        .join("snapshots/current.snap");
    assert!(snapshot.exists(), "it caught up by a snapshot");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn execution_settings_are_the_logs_whatever_each_node_was_started_with() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let mut cluster = Cluster::start(3, 0, 1_000, &[]).await;
    let endpoint = cluster.endpoints()[0].clone();
    let (code, out, _) = ordo_cli(&["status", "--all", "--endpoint", &endpoint, "--json"]);
    let report: serde_json::Value = serde_json::from_str(out.trim()).expect("JSON");
    assert_eq!(code, 0, "{out}");
    assert_eq!(report["settings_agree"], true);
    assert_eq!(
        report["nodes"][0]["cluster_settings"]["partitions"], "3",
        "{out}"
    );
    assert!(report["nodes"][1]["uptime_ms"].as_u64().is_some(), "{out}");
    assert!(!report["nodes"][1]["version"].as_str().unwrap().is_empty());

    eprintln!("--- phase: nodes 2 and 3 restart with other sweep bounds and hold TTLs");
    for (id, bound) in [(2u64, "1"), (3, "5")] {
        let node = cluster.node(id);
        node.kill9();
        node.extra.extend(
            ["--expiry-per-epoch-max", bound, "--reservation-ttl-s", "7"].map(String::from),
        );
        node.start();
    }
    let (code, out, _) = ordo_cli(&["status", "--all", "--endpoint", &endpoint, "--json"]);
    let report: serde_json::Value = serde_json::from_str(out.trim()).expect("JSON");
    assert_eq!(report["settings_agree"], true, "{out}");
    for node in report["nodes"].as_array().unwrap() {
        assert_eq!(node["cluster_settings"]["expiry_per_epoch_max"], "10000");
        assert_eq!(node["cluster_settings"]["reservation_ttl_s"], "600");
    }
    let _ = code;

    eprintln!("--- phase: hundreds of one-second holds lapse at once; every replica sweeps alike");
    let client = cluster.client().await;
    many_holds(&client, 300, 1).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    // Epochs after the lapse (each sweeps at most the bound per partition).
    for i in 0..20u32 {
        client.restock(i % 4 + 1, 1, 1, None).await.unwrap();
    }
    let epoch = client.status().await.unwrap().applied_epoch;
    cluster.wait_agreement(epoch, Duration::from_secs(30)).await;

    eprintln!("--- phase: a change through the log reaches every node");
    let (code, out, err) = ordo_cli(&[
        "settings",
        "set",
        "--expiry-per-epoch-max",
        "7",
        "--reservation-ttl-s",
        "30",
        "--endpoint",
        &cluster.endpoints()[2],
        "--json",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let set: serde_json::Value = serde_json::from_str(out.trim()).expect("JSON");
    assert_eq!(set["expiry_per_epoch_max"], 7);
    let after = set["epoch"].as_u64().unwrap();
    cluster.wait_agreement(after, Duration::from_secs(30)).await;
    let (_, out, _) = ordo_cli(&["status", "--all", "--endpoint", &endpoint, "--json"]);
    let report: serde_json::Value = serde_json::from_str(out.trim()).expect("JSON");
    for node in report["nodes"].as_array().unwrap() {
        assert_eq!(
            node["cluster_settings"]["expiry_per_epoch_max"], "7",
            "{out}"
        );
        assert_eq!(node["cluster_settings"]["reservation_ttl_s"], "30", "{out}");
    }
    let held = client
        .reserve(ordo_client::Reserve::new(&[line(1, 2, 1)]))
        .await
        .unwrap();
    assert_eq!(
        held.expires_at_ms - held.created_ms,
        30_000,
        "a hold without a TTL takes the recorded default"
    );
    let (code, _, err) = ordo_cli(&[
        "settings",
        "set",
        "--reservation-ttl-s",
        "100000",
        "--endpoint",
        &endpoint,
    ]);
    assert_ne!(code, 0, "a default TTL past the life cap: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_that_initialised_a_cluster_of_its_own_is_not_added() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let mut cluster = Cluster::start(2, 1, 100, &[]).await;
    let admin = cluster.client().await.with_cluster_secret(TEST_SECRET);
    let (addr, peer) = {
        let node = cluster.node(3);
        (node.addr.clone(), node.peer_addr.clone())
    };

    // Nothing runs at node 3's address yet: its history cannot be checked, so it is refused
    // at once (fails closed), not let in unchecked.
    let refused = admin
        .add_member_at(3, addr.clone(), peer.clone())
        .await
        .expect_err("a node that could not be asked was added");
    assert_eq!(refused.code(), Some(tonic::Code::Unavailable), "{refused}");
    assert!(
        refused.to_string().contains("cannot check the history"),
        "{refused}"
    );
    let status = admin.status().await.unwrap();
    assert_eq!(
        status.members.len(),
        2,
        "the unchecked node became a member"
    );

    // Node 3 started without --peer: a single-node cluster of its own, with epochs applied.
    let node = cluster.node(3);
    node.peers.clear();
    node.start();
    let refused = admin
        .add_member_at(3, addr.clone(), peer.clone())
        .await
        .expect_err("a node with another history was added");
    assert_eq!(
        refused.code(),
        Some(tonic::Code::FailedPrecondition),
        "{refused}"
    );
    assert!(refused.to_string().contains("another history"), "{refused}");
    let status = admin.status().await.unwrap();
    assert_eq!(status.members.len(), 2, "the refused node became a member");

    // Wiped and started to wait for the cluster, it joins.
    let node = cluster.node(3);
    node.kill9();
    node.wipe();
    node.peers = vec![(3, format!("{peer},{addr}"))];
    node.start();
    admin.add_member_at(3, addr, peer).await.unwrap();
    let epoch = admin.status().await.unwrap().applied_epoch;
    cluster.wait_agreement(epoch, Duration::from_secs(30)).await;
}
