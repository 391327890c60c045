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

//!
//! A producer's store reads (feed pages, subscriber pages, DC records) take locks a commit
//! also takes (the applied state, the feed's bounds, the overlay, sled's): were a producer
//! preempted while holding one, at the lowest priority on a busy node, the commit would wait
//! for the CPU the epochs leave, which is none (a priority inversion). So producers read
//! through [`read`], which runs the read on the request runtime's blocking threads, at normal
//! priority; only decoding, filtering and encoding, which share nothing, run at the lowest.

use std::sync::OnceLock;

/// Threads of the feed runtime.
const FEED_THREADS: usize = 1;

static FEED: OnceLock<tokio::runtime::Runtime> = OnceLock::new();

/// The request runtime, whose blocking threads run the producers' store reads.
static READER: OnceLock<tokio::runtime::Handle> = OnceLock::new();

/// Records the runtime whose blocking threads serve [`read`] (the first call wins).
pub fn set_reader(handle: tokio::runtime::Handle) {
    let _ = READER.set(handle);
}

/// Runs a store read for a producer at normal priority (see the module's doc); inline where
/// no reader runtime was recorded.
pub async fn read<T, F>(read: F) -> T
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    match READER.get() {
        Some(handle) => match handle.spawn_blocking(read).await {
            Ok(value) => value,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        },
        None => read(),
    }
}

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
