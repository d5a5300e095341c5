//! Noticing other processes' commits to the SQLite file without polling
//! it: on Linux, an inotify watch on the file's directory for writes to
//! its write-ahead log (`FILE-wal`; in WAL mode every commit appends
//! there). A waiting claim or result poller is woken by such a write, and
//! then checks the file cheaply (`PRAGMA data_version`, or the results
//! written since its last look) instead of waiting out its back-off.
//!
//! The back-off polls remain as the fallback (on other systems, where the
//! watch cannot be set, or for a write the kernel does not report, as on
//! a network file system), so the watch only ever makes a wake-up sooner.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};

use tokio::sync::Notify;

/// A watch on one database file's commits, started on first use.
#[derive(Debug)]
pub(super) struct FileWatch {
    path: PathBuf,
    changed: Arc<Notify>,
    started: AtomicBool,
    running: Arc<AtomicBool>,
}

impl FileWatch {
    /// A watch on `path` (not started yet).
    pub(super) fn new(path: &Path) -> Self {
        FileWatch {
            path: path.to_path_buf(),
            changed: Arc::new(Notify::new()),
            started: AtomicBool::new(false),
            running: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Starts the watch if it has not been tried yet; says whether it
    /// runs (then waiters are woken by other processes' commits).
    pub(super) fn start(&self) -> bool {
        if !self.started.swap(true, Ordering::SeqCst) {
            imp::spawn(&self.path, &self.changed, &self.running);
        }
        self.running.load(Ordering::SeqCst)
    }

    /// Woken by the next write to the file's log (by any process). Create
    /// it, and `enable` it, before the look it is to follow.
    pub(super) fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }
}

#[cfg(target_os = "linux")]
mod imp {
    use std::os::fd::AsFd;

    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

    use super::*;

    /// How often the watching thread checks that the watch is still
    /// wanted (its handle not dropped).
    const ALIVE_CHECK_MS: u16 = 1000;

    /// Starts a thread that wakes `changed`'s waiters on every write to
    /// `path`'s log, until `changed` is dropped; `running` is set while it
    /// runs (not at all if the watch cannot be set: the caller keeps
    /// polling).
    pub(super) fn spawn(path: &Path, changed: &Arc<Notify>, running: &Arc<AtomicBool>) {
        let Some(name) = path.file_name() else {
            return;
        };
        let mut wal = name.to_os_string();
        wal.push("-wal");
        let dir = match path.parent().filter(|d| !d.as_os_str().is_empty()) {
            Some(d) => d.to_path_buf(),
            None => PathBuf::from("."),
        };
        let watch = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK).and_then(|fd| {
            fd.add_watch(&dir, AddWatchFlags::IN_MODIFY)?;
            Ok(fd)
        });
        let fd = match watch {
            Ok(fd) => fd,
            Err(e) => {
                tracing::debug!(dir = %dir.display(), error = %e, "no inotify watch on the database's directory; polling only");
                return;
            }
        };
        let changed = Arc::downgrade(changed);
        running.store(true, Ordering::SeqCst);
        let flag = running.clone();
        let spawned = std::thread::Builder::new()
            .name("celeriac-sqlite-watch".to_string())
            .spawn(move || {
                watch_loop(&fd, &wal, &changed);
                flag.store(false, Ordering::SeqCst);
            });
        if spawned.is_err() {
            running.store(false, Ordering::SeqCst);
        }
    }

    fn watch_loop(fd: &Inotify, wal: &std::ffi::OsStr, changed: &Weak<Notify>) {
        loop {
            let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::from(ALIVE_CHECK_MS)) {
                Ok(0) => {
                    if changed.strong_count() == 0 {
                        return;
                    }
                }
                Ok(_) => {
                    let events = match fd.read_events() {
                        Ok(events) => events,
                        Err(nix::errno::Errno::EAGAIN) => continue,
                        Err(e) => {
                            tracing::debug!(error = %e, "the inotify watch failed; polling only");
                            return;
                        }
                    };
                    if events.iter().any(|e| e.name.as_deref() == Some(wal)) {
                        match changed.upgrade() {
                            Some(n) => n.notify_waiters(),
                            None => return,
                        }
                    }
                }
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "polling the inotify watch failed; polling the file only");
                    return;
                }
            }
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    use super::*;

    /// No watch here: the pollers' back-off alone.
    pub(super) fn spawn(_: &Path, _: &Arc<Notify>, _: &Arc<AtomicBool>) {}
}
