//! The transactional key-value API (`Transact`) against a real server: registers, lists,
//! compare-and-set aborts, atomicity, idempotency and bad input.

mod common;

use common::*;
use ordo_client::{v1, Error};
use tonic::Code;

fn read(key: &str) -> v1::KvOp {
    v1::KvOp {
        op: Some(v1::kv_op::Op::Read(key.into())),
    }
}
fn write(key: &str, value: i64) -> v1::KvOp {
    v1::KvOp {
        op: Some(v1::kv_op::Op::Write(v1::KvWrite {
            key: key.into(),
            value,
        })),
    }
}
fn cas(key: &str, from: i64, to: i64) -> v1::KvOp {
    v1::KvOp {
        op: Some(v1::kv_op::Op::Cas(v1::KvCas {
            key: key.into(),
            from,
            to,
        })),
    }
}
fn append(key: &str, value: i64) -> v1::KvOp {
    v1::KvOp {
        op: Some(v1::kv_op::Op::Append(v1::KvAppend {
            key: key.into(),
            value,
        })),
    }
}
fn int(r: &v1::KvResult) -> Option<i64> {
    match r.value.as_ref()?.value.as_ref()? {
        v1::kv_value::Value::Int(x) => Some(*x),
        _ => None,
    }
}
fn list(r: &v1::KvResult) -> Option<Vec<i64>> {
    match r.value.as_ref()?.value.as_ref()? {
        v1::kv_value::Value::List(l) => Some(l.values.clone()),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_lists_cas_and_atomicity() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path(), &[]);
    let c = node.client().await;

    eprintln!("--- phase: a register and a list, read back in one transaction");
    let r = c
        .transact(vec![write("x", 5), append("l", 1), append("l", 2)], None)
        .await
        .unwrap();
    assert!(r.committed, "{}", r.reason);
    let r = c
        .transact(vec![read("x"), read("l"), read("absent")], None)
        .await
        .unwrap();
    assert_eq!(int(&r.results[0]), Some(5));
    assert_eq!(list(&r.results[1]), Some(vec![1, 2]));
    assert!(r.results[2].value.is_none());

    eprintln!("--- phase: a failed cas aborts the whole transaction");
    let r = c
        .transact(vec![append("l", 3), cas("x", 4, 6)], None)
        .await
        .unwrap();
    assert!(!r.committed);
    assert_eq!(r.reason, "cas on key \"x\" expected 4, found 5");
    let r = c.transact(vec![read("l")], None).await.unwrap();
    assert_eq!(
        list(&r.results[0]),
        Some(vec![1, 2]),
        "the append before the failed cas did not apply"
    );
    let r = c
        .transact(vec![cas("x", 5, 6), read("x")], None)
        .await
        .unwrap();
    assert!(r.committed);
    assert_eq!(int(&r.results[1]), Some(6));

    eprintln!("--- phase: a retried request id applies once");
    let first = c
        .transact(vec![append("once", 1)], Some("kv-1".into()))
        .await
        .unwrap();
    let again = c
        .transact(vec![append("once", 1)], Some("kv-1".into()))
        .await
        .unwrap();
    assert_eq!(first, again);
    let r = c.transact(vec![read("once")], None).await.unwrap();
    assert_eq!(list(&r.results[0]), Some(vec![1]));

    eprintln!("--- phase: a retry of a transaction that read says so, without the values");
    let first = c
        .transact(vec![append("r", 4), read("r")], Some("kv-2".into()))
        .await
        .unwrap();
    assert_eq!(list(&first.results[1]), Some(vec![4]));
    assert!(!first.results_not_kept);
    let again = c
        .transact(vec![append("r", 4), read("r")], Some("kv-2".into()))
        .await
        .unwrap();
    assert!(again.committed && again.results_not_kept && again.results.is_empty());
    assert_eq!(again.epoch, first.epoch);
    let r = c.transact(vec![read("r")], None).await.unwrap();
    assert_eq!(list(&r.results[0]), Some(vec![4]), "applied once");

    eprintln!("--- phase: many keys (several partitions) in one transaction");
    let keys: Vec<String> = (0..12).map(|i| format!("k{i}")).collect();
    let r = c
        .transact(keys.iter().map(|k| append(k, 7)).collect(), None)
        .await
        .unwrap();
    assert!(r.committed);
    let r = c
        .transact(keys.iter().map(|k| read(k)).collect(), None)
        .await
        .unwrap();
    assert!(r.results.iter().all(|x| list(x) == Some(vec![7])));

    eprintln!("--- phase: bad input");
    let expect = |res: Result<v1::TransactResponse, Error>, fragment: &str| match res {
        Err(Error::Status(s)) => {
            assert_eq!(s.code(), Code::InvalidArgument, "{}", s.message());
            assert!(s.message().contains(fragment), "{}", s.message());
        }
        other => panic!("expected INVALID_ARGUMENT ({fragment}), got {other:?}"),
    };
    expect(
        c.transact(vec![], None).await,
        "between 1 and 64 operations, not 0",
    );
    expect(
        c.transact((0..65).map(|i| read(&format!("k{i}"))).collect(), None)
            .await,
        "not 65",
    );
    expect(
        c.transact(vec![read("")], None).await,
        "ops[0]: key must be 1 to 128 bytes",
    );
    expect(
        c.transact(vec![read("has space")], None).await,
        "printable ASCII",
    );
    expect(
        c.transact(vec![v1::KvOp { op: None }], None).await,
        "ops[0]: an operation is required",
    );
}
