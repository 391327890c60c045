//! Files a node reads again while it runs: its tokens file (`auth.rs`) and its TLS
//! certificates (`tls.rs`).
//!
//! A [`Reloading`] holds the value last loaded from its files and what told that version of
//! the files apart (inode, length, modification time of each). [`Reloading::watch`] looks every
//! [`RELOAD_EVERY`], and at once on SIGHUP: a changed version is loaded and swapped in whole;
//! one that does not load is logged, looked at once, and the value before stays in force.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// How often a node looks at the files it reloads.
pub const RELOAD_EVERY: Duration = Duration::from_secs(1);

/// What tells a file's versions apart (`None`: it could not be read).
type Stamp = Option<(u64, u64, Option<std::time::SystemTime>)>;

fn stamps(paths: &[PathBuf]) -> Vec<Stamp> {
    paths
        .iter()
        .map(|path| {
            let meta = std::fs::metadata(path).ok()?;
            #[cfg(unix)]
            let ino = std::os::unix::fs::MetadataExt::ino(&meta);
            #[cfg(not(unix))]
            let ino = 0;
            Some((ino, meta.len(), meta.modified().ok()))
        })
        .collect()
}

type Load<T> = Box<dyn Fn() -> anyhow::Result<T> + Send + Sync>;

/// A value loaded from files, reloaded when they change.
pub struct Reloading<T> {
    /// What it is, for the log.
    what: &'static str,
    paths: Vec<PathBuf>,
    load: Load<T>,
    /// The files' stamps, the value, and its generation (1 for the first, +1 per reload).
    current: RwLock<(Vec<Stamp>, Arc<T>, u64)>,
}

impl<T: Send + Sync + 'static> Reloading<T> {
    /// Loads the value; an error here stops the node from starting.
    pub fn open(
        what: &'static str,
        paths: Vec<PathBuf>,
        load: impl Fn() -> anyhow::Result<T> + Send + Sync + 'static,
    ) -> anyhow::Result<Arc<Self>> {
        let before = stamps(&paths);
        let value = load()?;
        Ok(Arc::new(Reloading {
            what,
            paths,
            load: Box::new(load),
            current: RwLock::new((before, Arc::new(value), 1)),
        }))
    }

    pub fn current(&self) -> Arc<T> {
        self.current.read().expect("reload lock").1.clone()
    }

    /// Moves with every reload.
    pub fn generation(&self) -> u64 {
        self.current.read().expect("reload lock").2
    }

    /// Loads the files again if they changed since they were last looked at (or always, with
    /// `force`). `Ok(true)`: the new value is in force; an error leaves the old one.
    pub fn reload(&self, force: bool) -> anyhow::Result<bool> {
        let now = stamps(&self.paths);
        if !force && self.current.read().expect("reload lock").0 == now {
            return Ok(false);
        }
        let loaded = (self.load)();
        let mut current = self.current.write().expect("reload lock");
        // This version is looked at once, whether it loaded or not.
        current.0 = now;
        current.1 = Arc::new(loaded?);
        current.2 += 1;
        Ok(true)
    }

    /// Reloads on change or SIGHUP, until the last handle on this value is gone.
    pub fn watch(self: &Arc<Self>) {
        let this = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(RELOAD_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            #[cfg(unix)]
            let mut hup =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
            loop {
                #[cfg(unix)]
                let force = match hup.as_mut() {
                    Some(hup) => tokio::select! {
                        _ = tick.tick() => false,
                        _ = hup.recv() => true,
                    },
                    None => {
                        tick.tick().await;
                        false
                    }
                };
                #[cfg(not(unix))]
                let force = {
                    tick.tick().await;
                    false
                };
                let Some(this) = this.upgrade() else {
                    return;
                };
                match this.reload(force) {
                    Ok(false) => {}
                    Ok(true) => tracing::info!(what = this.what, files = ?this.paths, "reloaded"),
                    Err(e) => tracing::error!(
                        what = this.what,
                        error = %format!("{e:#}"),
                        "not reloaded; what was loaded before stays in force"
                    ),
                }
            }
        });
    }
}
