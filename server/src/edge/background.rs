//! The runtime the feed's producers run on (Watch and WatchNotifications streams).
//!
//! A producer is CPU work that seldom waits: decoding epochs, filtering, paging through a
//! million subscribers. On the request runtime it would compete with the requests and the
//! Raft and epoch tasks as an equal. Its own runtime's threads run at the lowest scheduling
//! priority (nice 19: on Linux, a thread's own), so the fan-out uses the CPU the epochs leave
//! and never delays them; the streams' channels cross runtimes as they are.

use std::sync::OnceLock;

/// Threads of the feed runtime.
const FEED_THREADS: usize = 2;

static FEED: OnceLock<tokio::runtime::Runtime> = OnceLock::new();

/// The feed runtime, started on first use and kept for the life of the process.
pub fn feed() -> &'static tokio::runtime::Runtime {
    FEED.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(FEED_THREADS)
            .thread_name("ordo-feed")
            .on_thread_start(lowest_priority)
            .enable_all()
            .build()
            .expect("starting the feed runtime")
    })
}

#[cfg(target_os = "linux")]
fn lowest_priority() {
    // SAFETY: setpriority only reads its integer arguments; `0` names the calling thread.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) };
    if rc != 0 {
        tracing::warn!("could not lower the feed threads' priority");
    }
}

#[cfg(not(target_os = "linux"))]
fn lowest_priority() {}
