//! An Ordo watcher: one Watch stream on one node, resumed from its last token when the node
//! ends it (a consumer that fell a buffer behind is cut off with RESOURCE_EXHAUSTED), as the
//! client's contract asks. An epoch that comes in several messages is handed on only whole,
//! so a resume (which repeats a partly sent epoch) never repeats a change.

use std::time::Duration;

use anyhow::Context;
use ordo_client::{v1, Client};
use v1::change_event::Event;
use v1::watch_request::Start;
use v1::watch_response::Message;

use super::subscriber::{Batch, Delivery, Subscriber};

/// A quiet stream sends a Progress message this often, so a watcher learns within it that it
/// has caught up.
const PROGRESS_INTERVAL_MS: u32 = 50;
/// How long a new stream may take to send its first message (a Progress, on a quiet node).
const FIRST_MESSAGE_MAX: Duration = Duration::from_secs(30);
/// Resumes one watcher may need in a run, at most; past it the watcher stops with an error.
const RESUMES_MAX: u64 = 1_000;
/// How long a resume keeps trying while the node still counts the old stream's slot.
const REOPEN_MAX: Duration = Duration::from_secs(30);

pub struct OrdoWatch {
    client: Client,
    kinds: Vec<i32>,
    stream: tonic::Streaming<v1::WatchResponse>,
    /// Where to resume: the last Events (whole epoch) or Progress message's token.
    token: String,
    /// The messages of an epoch that has more to come.
    partial: Vec<v1::WatchEvents>,
    /// A delivery read while opening, handed on first.
    pending: Option<Delivery>,
    resumes: u64,
}

impl OrdoWatch {
    /// Watches `kinds` (empty: every kind) on the node at `url`, from the epoch after the one
    /// it applied last; returns once the stream has sent its first message, so that it has a
    /// resume token before any order is sent. Its own connection, as a separate consumer
    /// would have.
    pub async fn open(url: &str, kinds: Vec<i32>) -> anyhow::Result<Self> {
        let client = Client::connect(url.to_string()).await?;
        let mut stream = client
            .watch(request(Start::FromNow(true), &kinds))
            .await
            .with_context(|| format!("opening a Watch stream on {url}"))?;
        let first = tokio::time::timeout(FIRST_MESSAGE_MAX, stream.message())
            .await
            .with_context(|| format!("no message from the Watch stream on {url}"))??
            .context("the Watch stream ended at once")?;
        let mut watch = Self {
            client,
            kinds,
            stream,
            token: String::new(),
            partial: Vec::new(),
            pending: None,
            resumes: 0,
        };
        watch.pending = watch.take(first);
        anyhow::ensure!(
            !watch.token.is_empty() || !watch.partial.is_empty(),
            "the first Watch message had no resume token"
        );
        Ok(watch)
    }

    /// A delivery from `message`, or `None` when it is part of an epoch with more to come.
    fn take(&mut self, message: v1::WatchResponse) -> Option<Delivery> {
        match message.message? {
            Message::Events(e) => {
                let more = e.more;
                let token = e.resume_token.clone();
                self.partial.push(e);
                if more {
                    return None;
                }
                let chunks = std::mem::take(&mut self.partial);
                self.token = token;
                let mut d = Delivery::now();
                d.through = Some(chunks[0].epoch);
                d.batches.push(batch(&chunks));
                Some(d)
            }
            Message::Progress(p) => {
                self.token = p.resume_token;
                let mut d = Delivery::now();
                d.through = Some(p.epoch);
                Some(d)
            }
        }
    }

    /// A new stream from the last token, after the node ended the old one (`why`).
    async fn resume(&mut self, why: String) -> anyhow::Result<()> {
        self.partial.clear();
        self.resumes += 1;
        anyhow::ensure!(
            self.resumes <= RESUMES_MAX,
            "resumed {RESUMES_MAX} times; the last stream ended with {why}"
        );
        let deadline = tokio::time::Instant::now() + REOPEN_MAX;
        loop {
            let start = Start::ResumeToken(self.token.clone());
            match self.client.watch(request(start, &self.kinds)).await {
                Ok(stream) => {
                    self.stream = stream;
                    return Ok(());
                }
                // The node frees the old stream's watcher slot when its producer next runs.
                Err(e)
                    if e.code() == Some(tonic::Code::ResourceExhausted)
                        && tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => {
                    return Err(anyhow::anyhow!(
                        "resuming from {} after {why}: {e}",
                        self.token
                    ))
                }
            }
        }
    }
}

impl Subscriber for OrdoWatch {
    async fn next(&mut self) -> anyhow::Result<Delivery> {
        if let Some(d) = self.pending.take() {
            return Ok(d);
        }
        loop {
            match self.stream.message().await {
                Ok(Some(message)) => {
                    if let Some(d) = self.take(message) {
                        return Ok(d);
                    }
                }
                Ok(None) => self.resume("the end of the stream".into()).await?,
                Err(status) => {
                    self.resume(format!("{:?}: {}", status.code(), status.message()))
                        .await?
                }
            }
        }
    }

    fn resumes(&self) -> u64 {
        self.resumes
    }
}

fn request(start: Start, kinds: &[i32]) -> v1::WatchRequest {
    v1::WatchRequest {
        start: Some(start),
        kinds: kinds.to_vec(),
        progress_interval_ms: PROGRESS_INTERVAL_MS,
        ..Default::default()
    }
}

/// One epoch's messages as a batch.
fn batch(chunks: &[v1::WatchEvents]) -> Batch {
    let epoch = chunks[0].epoch;
    let mut b = Batch {
        commit_unix_us: chunks[0].epoch_time_ms as i64 * 1_000,
        in_order: true,
        ..Default::default()
    };
    let mut first = None;
    let mut last: Option<u32> = None;
    for chunk in chunks {
        if chunk.epoch != epoch {
            b.in_order = false;
        }
        for e in &chunk.events {
            b.events += 1;
            if last.is_some_and(|l| e.index <= l) {
                b.in_order = false;
            }
            first.get_or_insert(e.index);
            last = Some(e.index);
            match &e.event {
                Some(Event::Order(o)) => b.orders.push(o.order_id),
                Some(Event::Price(p)) => b.prices.push((p.sku, p.after_cents)),
                _ => {}
            }
        }
    }
    if let (Some(first), Some(last)) = (first, last) {
        b.position = Some(((epoch, first), (epoch, last)));
    }
    b
}
