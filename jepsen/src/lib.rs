//! Ordo's Jepsen-style room: histories and the checkers that judge them.
//!
//! In: a history (JSONL, one event a line; see [`history`]). Out: a verdict with the anomalies
//! that explain it. The checkers are verified on real external histories (the porcupine etcd
//! set in `../shared/testdata`) and on hand-built anomalous and valid ones.
//!
//! Must never depend on Ordo's internals: the runner talks to real `ordo` processes through
//! `ordo-client` only, and the checkers see nothing but the history.

pub mod append;
pub mod bank;
pub mod cart;
pub mod checks;
pub mod feed_record;
pub mod history;
pub mod hostile;
pub mod inventory;
pub mod nearby;
pub mod plot;
pub mod porcupine;
pub mod pricing;
pub mod pricing_check;
pub mod register;
pub mod reservations;
pub mod runner;
pub mod split;
pub mod watch;
pub mod watch_check;
