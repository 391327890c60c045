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

use std::sync::{mpsc, OnceLock};

/// Threads of the feed runtime.
const FEED_THREADS: usize = 1;

static FEED: OnceLock<tokio::runtime::Runtime> = OnceLock::new();

/// A store read waiting for the feed readers' thread.
type Job = Box<dyn FnOnce() + Send>;

/// The feed readers' thread, at nice 10, and its queue. The queue is unbounded as a channel
/// but holds at most one read per producer (each waits for its read before the next), and
/// `--watchers-max` bounds the producers.
static READER: OnceLock<mpsc::Sender<Job>> = OnceLock::new();

/// The reader thread's queue, starting the thread on first use. A thread inherits its
/// creator's scheduling policy, and only a privileged thread may leave `SCHED_IDLE`: so the
/// thread is started by [`feed`] (from a request's thread, at the normal policy) before any
/// feed thread runs, never from a feed thread. (tokio's `spawn_blocking` starts its threads
/// from the caller's: from a producer, they would run at `SCHED_IDLE`.)
fn reader() -> &'static mpsc::Sender<Job> {
    READER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("ordo-feed-read".into())
            .spawn(move || {
                low_priority();
                for job in rx {
                    job();
                }
            })
            .expect("starting the feed readers' thread");
        tx
    })
}

/// Runs a store read for a producer on the feed readers' thread (see the module's doc).
pub async fn read<T, F>(read: F) -> T
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move || {
        let _ = tx.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(read)));
    });
    reader()
        .send(job)
        .expect("the feed readers' thread runs for the life of the process");
    match rx
        .await
        .expect("the feed readers' thread answers every read")
    {
        Ok(value) => value,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// The feed runtime, started on first use and kept for the life of the process.
pub fn feed() -> &'static tokio::runtime::Runtime {
    FEED.get_or_init(|| {
        // The readers' thread first, from this thread (see [`reader`]).
        reader();
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

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// This thread's scheduling policy and nice value.
    fn priority() -> (i32, i32) {
        // SAFETY: both only read their integer arguments; `0` names the calling thread.
        unsafe {
            (
                libc::sched_getscheduler(0),
                libc::getpriority(libc::PRIO_PROCESS, 0),
            )
        }
    }

    /// Issue 28, point 14: a producer runs at the lowest priority, but its store reads (which
    /// take locks a commit needs) run on a thread the scheduler does run on a busy node.
    #[test]
    fn producers_run_idle_but_read_the_store_at_nice_10() {
        let (producer, reads) = futures::executor::block_on(async {
            feed()
                .spawn(async { (priority(), read(priority).await) })
                .await
                .unwrap()
        });
        assert!(
            producer.0 == libc::SCHED_IDLE || producer.1 == 19,
            "a producer runs at {producer:?}"
        );
        assert_eq!(
            reads,
            (libc::SCHED_OTHER, 10),
            "its store reads run at that"
        );
    }
}
