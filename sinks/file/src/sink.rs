//! `FileSink`: the async face of [`Rotator`]. File I/O and fsync block, so they run on tokio's
//! blocking pool, never on the runtime's workers. The rotator sits behind a mutex rather than
//! being moved into the blocking task, so a write the buffer abandons (its stop deadline) cannot
//! lose the open file: the blocking task finishes and leaves the state in place for `close`.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use async_trait::async_trait;
use ds_api::{DBError, OnlineCheck, Sink};

use crate::config::FileConfig;
use crate::rotate::Rotator;

/// The `file` sink.
pub struct FileSink {
    rotator: Arc<Mutex<Rotator>>,
    /// The output directory, for `check --online`.
    dir: PathBuf,
}

impl FileSink {
    pub fn new(cfg: FileConfig) -> Self {
        let dir = cfg.dir.clone();
        FileSink { rotator: Arc::new(Mutex::new(Rotator::new(cfg))), dir }
    }

    async fn blocking<T: Send + 'static>(&self, f: impl FnOnce(&mut Rotator) -> std::io::Result<T> + Send + 'static) -> Result<T, DBError> {
        let rotator = self.rotator.clone();
        let result = tokio::task::spawn_blocking(move || {
            // A panic while holding the lock leaves a usable rotator (at worst a torn last line).
            let mut r = rotator.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut r)
        })
        .await
        .map_err(|e| std::io::Error::other(format!("file writer task failed: {e}")))?;
        Ok(result?)
    }
}

#[async_trait]
impl Sink for FileSink {
    /// Appends the batch; an I/O error (disk full, permissions) goes back to the buffer as
    /// `DBError::Io`, which keeps the batch and retries.
    async fn write(&mut self, lines: &[u8], _points: usize) -> Result<(), DBError> {
        let data = lines.to_vec();
        self.blocking(move |r| r.write(&data, SystemTime::now())).await
    }

    /// Finishes the current file (gzip trailer) and fsyncs it.
    async fn close(&mut self) -> Result<(), DBError> {
        self.blocking(|r| r.close()).await
    }

    /// The directory exists (or can be made) and takes a file: what the first write needs.
    async fn check_online(&mut self) -> OnlineCheck {
        let dir = self.dir.clone();
        let checked = format!("{} is writable", dir.display());
        let probe = dir.join(format!(".data-storage-check-{}", std::process::id()));
        let result = tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&dir)?;
            std::fs::write(&probe, b"")?;
            std::fs::remove_file(&probe)
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
        match result {
            Ok(()) => OnlineCheck::Done { checked, problems: vec![] },
            Err(e) => OnlineCheck::failed(checked, format!("cannot write to {}: {e}", self.dir.display())),
        }
    }
}
