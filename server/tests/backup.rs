//! Backups as an operator takes them: `ordo backup` from a follower of a 3-node cluster
//! under load, `ordo restore` into a new data directory, a new single-node cluster on it that
//! grows with `ordo member add`, and every stock row and order compared with what the
//! clients were told.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use ordo_client::Client;

const STOCK: i64 = 1_000_000;

/// The header line of a backup file.
fn header(file: &std::path::Path) -> serde_json::Value {
    let text = std::fs::read(file).expect("reading the backup");
    let mut lines = text.split(|&b| b == b'\n');
    assert_eq!(lines.next(), Some(&b"ORDO-BACKUP 1"[..]));
    serde_json::from_slice(lines.next().expect("a header line")).expect("a JSON header")
}

/// `node`'s state hash at `epoch`, hex.
async fn hash_at(client: &Client, epoch: u64) -> String {
    ordo_storage::hex(
        &client
            .state_hash(epoch)
            .await
            .expect("state hash at the backup's epoch")
            .state_hash,
    )
}

/// A node of the restored cluster, on ports of its own.
fn restored_node(dir: &std::path::Path, id: u64, secret_file: &std::path::Path) -> ClusterNode {
    let ports = free_ports(2);
    let addr = format!("127.0.0.1:{}", ports[0]);
    let peer_addr = format!("127.0.0.1:{}", ports[1]);
    ClusterNode {
        id,
        peers: if id == 1 {
            // Alone: a single node that initialises itself.
            vec![]
        } else {
            vec![(id, format!("{peer_addr},{addr}"))]
        },
        addr,
        peer_addr,
        secret_file: secret_file.to_path_buf(),
        data_dir: dir.join(format!("restored-{id}")),
        extra: vec![],
        child: None,
    }
}

/// Every stock row and every acknowledged order on `client`'s node is as of `epoch`: orders
/// acknowledged in epochs up to it are there with their lines, later ones are not, and each
/// row's stock is the seeded stock less the units of the orders up to it.
async fn check_state_at(client: &Client, epoch: u64, acked: &Acks) {
    let mut taken: BTreeMap<(u32, u32), i64> = BTreeMap::new();
    let (mut before, mut after) = (0, 0);
    for (id, result) in acked.iter().filter(|(_, r)| committed(r)) {
        if result.epoch <= epoch {
            before += 1;
            for line in &result.lines {
                *taken.entry((line.dc_id, line.sku)).or_default() += line.allocated;
            }
            let order = client
                .get_order(result.order_id)
                .await
                .unwrap_or_else(|e| panic!("order {id} (epoch {}) is missing: {e}", result.epoch));
            assert_eq!(&order.request_id, id);
            assert_eq!(order.lines, result.lines, "order {id}");
        } else {
            after += 1;
            let err = client
                .get_order(result.order_id)
                .await
                .expect_err("an order after the backup's epoch is in the restored state");
            assert_eq!(err.code(), Some(tonic::Code::NotFound), "{err}");
        }
    }
    assert!(
        before > 0 && after > 0,
        "the backup was not taken under load ({before} orders before it, {after} after)"
    );
    for dc in 1..=4 {
        for sku in 1..=3 {
            let stock = client.get_stock(dc, sku).await.expect("stock");
            let expected = STOCK - taken.get(&(dc, sku)).copied().unwrap_or(0);
            assert_eq!(stock.on_hand, expected, "dc {dc} sku {sku}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backup_under_load_restores_to_the_same_state_and_grows() {
    // A small message limit: the backup comes in many chunks (half of it each).
    let cluster = Cluster::start(3, 0, STOCK, &["--message-bytes-max", "65536"]).await;
    let leader = cluster.leader(Duration::from_secs(30)).await;
    let follower = cluster.nodes.iter().find(|n| n.id != leader).unwrap();
    let writers = Writers::start(cluster.endpoints(), 4, "bk").await;
    writers.wait_acked(200, Duration::from_secs(60)).await;

    let file = cluster.dir.path().join("backup.ordo");
    let (code, out, err) = ordo_cli(&[
        "backup",
        "--endpoint",
        &follower.endpoint(),
        "--out",
        file.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(code, 0, "ordo backup: {out}{err}");
    let printed: serde_json::Value = serde_json::from_str(out.trim()).expect("JSON");
    let head = header(&file);
    assert_eq!(printed["epoch"], head["epoch"]);
    assert_eq!(printed["node_id"], follower.id);
    let epoch = head["epoch"].as_u64().unwrap();
    assert!(
        head["bytes"].as_u64().unwrap() > 2 * 32 * 1024,
        "a backup of a few chunks only: {head}"
    );
    let hash = head["state_hash"].as_str().unwrap().to_string();
    assert!(
        !file.with_file_name("backup.ordo.partial").exists(),
        "the partial file stayed"
    );

    // Orders go on after the backup; then every node agrees, the leader's hash at the
    // backup's epoch among them.
    let acked_at_backup = writers.acked_count();
    writers
        .wait_acked(acked_at_backup + 200, Duration::from_secs(60))
        .await;
    let (attempted, acked) = writers.finish().await;
    assert_eq!(attempted.len(), acked.len(), "an order went unanswered");
    let source = Client::connect(cluster.nodes[(leader - 1) as usize].endpoint())
        .await
        .unwrap();
    assert_eq!(
        hash_at(&source, epoch).await,
        hash,
        "the backup's state hash is not the cluster's at its epoch"
    );

    // A second backup file over the first is refused without --force.
    let (code, _, err) = ordo_cli(&[
        "backup",
        "--endpoint",
        &follower.endpoint(),
        "--out",
        file.to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("--force"), "{err}");

    // Restore into a new data directory: the store holds the backup's epoch and hash.
    let restored_dir = cluster.dir.path().join("restored-1");
    let (code, out, err) = ordo_cli(&[
        "restore",
        "--from",
        file.to_str().unwrap(),
        "--data-dir",
        restored_dir.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(code, 0, "ordo restore: {out}{err}");
    let restored: serde_json::Value = serde_json::from_str(out.trim()).expect("JSON");
    assert_eq!(restored["epoch"], epoch);
    assert_eq!(restored["state_hash"], hash.as_str());
    // Not twice into the same directory.
    let (code, _, err) = ordo_cli(&[
        "restore",
        "--from",
        file.to_str().unwrap(),
        "--data-dir",
        restored_dir.to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("not empty"), "{err}");

    // A new single-node cluster on it, with a secret of its own. Not as one of several nodes
    // at first: those would replay a log that never held the restored state.
    let secret = cluster.dir.path().join("new-secret");
    std::fs::write(&secret, "another-cluster-secret-0123456789").unwrap();
    let mut one = restored_node(cluster.dir.path(), 1, &secret);
    let (code, _, err) = ordo_cli(&[
        "server",
        "--node-id",
        "1",
        "--listen",
        &one.addr,
        "--data-dir",
        restored_dir.to_str().unwrap(),
        "--cluster-secret-file",
        secret.to_str().unwrap(),
        "--peer",
        &format!("1={},{}", one.peer_addr, one.addr),
        "--peer",
        "2=127.0.0.1:1,127.0.0.1:2",
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("start it alone first"), "{err}");
    one.start();
    assert!(
        !restored_dir.join("restored-from-backup").exists(),
        "the first start left the restore marker"
    );
    let client = one.client().await;
    assert_eq!(hash_at(&client, epoch).await, hash);
    check_state_at(&client, epoch, &acked).await;

    // It grows: a second, empty node joins and catches up to the same state.
    let mut two = restored_node(cluster.dir.path(), 2, &secret);
    two.start();
    let admin = client
        .clone()
        .with_cluster_secret("another-cluster-secret-0123456789");
    let members = admin
        .add_member_at(2, two.addr.clone(), two.peer_addr.clone())
        .await
        .expect("member add on the restored cluster");
    assert_eq!(members.members.len(), 2);
    let joined = two.client().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match joined.state_hash(epoch).await {
            Ok(h) => {
                assert_eq!(ordo_storage::hex(&h.state_hash), hash);
                break;
            }
            Err(e) => assert!(
                Instant::now() < deadline,
                "the new member has no hash at epoch {epoch}: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    check_state_at(&joined, epoch, &acked).await;

    // The restored cluster takes orders from the next epoch on.
    let placed = client
        .place_order(&[line(1, 1, 1)], false, None)
        .await
        .expect("an order on the restored cluster");
    assert!(committed(&placed));
    assert!(placed.epoch > epoch);
}

#[test]
fn a_damaged_backup_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    // A backup of an empty single node is enough to damage.
    let mut node = TestNode::start(&dir.path().join("node"), &[]);
    let file = dir.path().join("b.ordo");
    let (code, out, err) = ordo_cli(&[
        "backup",
        "--endpoint",
        &node.endpoint,
        "--out",
        file.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    node.stop();
    let whole = std::fs::read(&file).unwrap();

    let restore = |bytes: &[u8], name: &str| {
        let damaged = dir.path().join(name);
        std::fs::write(&damaged, bytes).unwrap();
        let target = dir.path().join(format!("{name}-data"));
        let (code, _, err) = ordo_cli(&[
            "restore",
            "--from",
            damaged.to_str().unwrap(),
            "--data-dir",
            target.to_str().unwrap(),
        ]);
        assert_eq!(code, 1, "{name} was restored");
        assert!(
            !target.join("state").exists(),
            "{name}: a refused restore left a store behind"
        );
        err
    };
    let mut flipped = whole.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    assert!(restore(&flipped, "flipped").contains("BLAKE3"));
    assert!(restore(&whole[..whole.len() - 10], "short").contains("damaged"));
    let mut longer = whole.clone();
    longer.extend_from_slice(b"more");
    assert!(restore(&longer, "longer").contains("damaged"));
    assert!(restore(b"hello\n", "other").contains("not an Ordo backup"));
    // The whole file restores.
    let (code, _, err) = ordo_cli(&[
        "restore",
        "--from",
        file.to_str().unwrap(),
        "--data-dir",
        dir.path().join("fine").to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
}
