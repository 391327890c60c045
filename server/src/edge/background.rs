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
//! preempted while holding one at `SCHED_IDLE` on a busy node, the commit would wait for CPU
//! the epochs never leave (a priority inversion). So producers read through [`read`], on a
//! thread of their own at nice 10: low enough that a thousand watchers reading history take
//! a tenth of a core from the epochs at most, high enough that the scheduler runs it within
//! milliseconds, so a lock it holds is soon released. The request runtime's blocking threads
//! are not used: the epochs' execution runs there, and must never queue behind feed reads.

use std::sync::OnceLock;

/// Threads of the feed runtime.
const FEED_THREADS: usize = 1;

static FEED: OnceLock<tokio::runtime::Runtime> = OnceLock::new();

/// The feed readers' runtime: one blocking thread at nice 10.
static READER: OnceLock<tokio::runtime::Runtime> = OnceLock::new();

fn reader() -> &'static tokio::runtime::Runtime {
    READER.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .max_blocking_threads(1)
            .thread_name("ordo-feed-read")
            .on_thread_start(low_priority)
            .enable_all()
            .build()
            .expect("starting the feed readers' runtime")
    })
}

/// Runs a store read for a producer on the feed readers' thread (see the module's doc).
pub async fn read<T, F>(read: F) -> T
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    match reader().spawn_blocking(read).await {
        Ok(value) => value,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
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

fn low_priority() {
    // SAFETY: setpriority only reads its integer arguments; `0` names the calling thread.
    #[cfg(target_os = "linux")]
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 10) } != 0 {
        tracing::warn!("could not lower the feed readers' priority");
    }
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
