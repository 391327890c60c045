//! A node on a host whose open-file limit is lower than its connection caps: the caps shrink
//! to fit, so a flood of connections cannot take the descriptors the log and the store need.
//! (A test binary of its own: it lowers this process's limit, which the node inherits.)

mod common;

use common::*;

/// The open-file limit, soft and hard, of this process and the node it starts.
const OPEN_FILES: u64 = 600;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_caps_fit_under_the_open_file_limit() {
    let limit = libc::rlimit {
        rlim_cur: OPEN_FILES,
        rlim_max: OPEN_FILES,
    };
    // SAFETY: setrlimit reads the struct it is given, which outlives the call.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) }, 0);
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path(), &[]);
    let client = node.client().await;
    seed(&client, 10).await;
    let addr = node.endpoint.trim_start_matches("http://").to_string();

    eprintln!("--- phase: 400 silent sockets from 4 sources, more than the limit leaves");
    let mut flood = Vec::new();
    for source in ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"] {
        for _ in 0..100 {
            flood.push(socket_from(source, &addr).await);
        }
    }
    // The caps: 600 less 256 for files, shared between the ports as 8,192 to 1,024, so the
    // client port keeps 305; the rest are closed at once.
    let closed = futures::future::join_all(
        flood
            .iter_mut()
            .map(|s| closed_within(s, std::time::Duration::from_millis(300))),
    )
    .await
    .into_iter()
    .filter(|&c| c)
    .count();
    assert!(
        closed >= 400 - 305,
        "{closed} of 400 closed: the client port kept more connections than the open-file \
         limit leaves room for"
    );

    eprintln!("--- phase: the node still writes its log and answers");
    for i in 0..20 {
        let placed = client
            .place_order_request(ordo_client::v1::PlaceOrderRequest {
                request_id: format!("after-flood-{i}"),
                lines: vec![line(1, 1, 1).into()],
                ..Default::default()
            })
            .await;
        assert!(placed.is_ok(), "order {i} after the flood: {placed:?}");
    }
    drop(flood);
}
