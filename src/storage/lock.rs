//! The exclusive `flock` on `<root>/LOCK` (spec §8), the lock QuiverDB 1.x
//! uses: one applier per follower.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fs2::FileExt as _;

pub use crate::error::LockHint;
use crate::error::{Error, Result};
use crate::format::layout::*;

/// How [`DbLock::acquire_with`] takes the lock.
#[derive(Clone, Debug, Default)]
pub struct LockOptions {
    /// Wait until the lock is free instead of failing at once.
    pub wait: bool,
    /// While waiting, give up as soon as this is set (a signal handler's
    /// flag): a blocking `flock` would sleep through SIGTERM.
    pub stop: Option<Arc<AtomicBool>>,
    /// What the error says when the lock is held and `wait` is false.
    pub hint: LockHint,
}

/// How often a waiter with a stop flag retries the lock.
const LOCK_POLL: Duration = Duration::from_millis(50);

/// The exclusive `flock` on `<root>/LOCK` (§8), held until dropped. The same
/// file and mechanism as QuiverDB 1.x, so 1.x readers and writers see it.
#[derive(Debug)]
pub struct DbLock {
    file: File,
    path: PathBuf,
}

impl DbLock {
    /// Take the lock; with `wait` false, fail at once if another process
    /// holds it (the error suggests `--wait-lock`).
    pub fn acquire(root: &Path, wait: bool) -> Result<DbLock> {
        DbLock::acquire_with(
            root,
            &LockOptions {
                wait,
                stop: None,
                hint: LockHint::WaitLock,
            },
        )
    }

    /// Take the lock as `opts` says.
    pub fn acquire_with(root: &Path, opts: &LockOptions) -> Result<DbLock> {
        fs::create_dir_all(root).map_err(|e| Error::io("cannot create folder", root, e))?;
        let path = root.join(LOCK_FILE);
        // create+read+write and never truncate, as 1.x opens it.
        #[allow(clippy::suspicious_open_options)]
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .open(&path)
            .map_err(|e| Error::io("cannot open lock file", &path, e))?;
        loop {
            let res = if opts.wait && opts.stop.is_none() {
                file.lock_exclusive()
            } else {
                file.try_lock_exclusive()
            };
            match res {
                Ok(()) => return Ok(DbLock { file, path }),
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.raw_os_error() == Some(libc::EWOULDBLOCK) =>
                {
                    if !opts.wait {
                        return Err(Error::Locked {
                            path: root.to_path_buf(),
                            hint: opts.hint,
                        });
                    }
                    if opts.stop.as_ref().is_some_and(|s| s.load(Ordering::SeqCst)) {
                        return Err(Error::LockWaitInterrupted {
                            path: root.to_path_buf(),
                        });
                    }
                    std::thread::sleep(LOCK_POLL);
                }
                Err(e) => return Err(Error::io("cannot lock", path, e)),
            }
        }
    }

    /// Check that `DIR/LOCK` is still the file this lock is on. If someone
    /// deleted or replaced it, a second applier can lock the new file while
    /// we run, and two appliers damage the follower: the caller must stop
    /// before writing anything more.
    pub fn check_still_held(&self) -> Result<()> {
        use std::os::unix::fs::MetadataExt;
        let held = self
            .file
            .metadata()
            .map_err(|e| Error::io("cannot stat lock file", &self.path, e))?;
        let lost = match fs::metadata(&self.path) {
            Ok(m) => m.dev() != held.dev() || m.ino() != held.ino(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => true,
            Err(e) => return Err(Error::io("cannot stat lock file", &self.path, e)),
        };
        if lost {
            return Err(Error::LockLost {
                path: self.path.clone(),
            });
        }
        Ok(())
    }
}
