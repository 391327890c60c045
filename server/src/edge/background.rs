//! The runtime the feed's producers run on (Watch and WatchNotifications streams).
//!
//! A producer is CPU work that seldom waits: decoding epochs, filtering, paging through a
//! million subscribers. On the request runtime it would compete with the requests and the
//! Raft and epoch tasks as an equal. Its own runtime's threads run under Linux's `SCHED_IDLE`
//! policy, so the fan-out uses the CPU the epochs leave: any other thread that wakes takes the
//! core from them at once. (Nice 19 was not enough: the kernel lets a running thread of any
//! weight finish its slice, a millisecond or more, before a woken one runs, and an epoch is a
//! chain of wake-ups: the cut, the log append, the fsync, execution, the answers. With both
//! cores fanning out, orders took 60% longer.) One thread, so a fan-out never holds both cores.
//! Where `SCHED_IDLE` is refused, nice 19. The streams' channels cross runtimes as they are.

use std::sync::OnceLock;

/// Threads of the feed runtime.
const FEED_THREADS: usize = 1;

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
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler reads `param`, which outlives the call; pid 0 names the
    // calling thread.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } == 0 {
        return;
    }
    // SAFETY: setpriority only reads its integer arguments; `0` names the calling thread.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) } != 0 {
        tracing::warn!("could not lower the feed threads' priority");
    }
}

#[cfg(not(target_os = "linux"))]
fn lowest_priority() {}
