//! Noticing other processes' commits to the SQLite file without polling
//! it: on Linux, an inotify watch on the file's write-ahead log
//! (`FILE-wal`; in WAL mode every commit appends there). A waiting claim
//! or result poller is woken by the next write to it, and then checks the
//! file cheaply (`PRAGMA data_version`, or the results written since its
//! last look) instead of waiting out its back-off.
//!
//! The watch is one-shot (`IN_ONESHOT`): a waiter arms it before its look,
//! the first write after that fires it once and removes it, and the next
//! waiter arms it again. So a busy file, which nobody waits on, pays
//! nothing for it: an armed watch on every write (every WAL frame) cost a
//! wake-up of the watching thread per frame, which doubled the worker's
//! CPU per task on W1.
//!
//! The back-off polls remain as the fallback (on other systems, where the
//! watch cannot be set, or for a write the kernel does not report, as on
//! a network file system), so the watch only ever makes a wake-up sooner.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;
use tokio::sync::Notify;

/// A watch on one database file's commits, started on first use.
#[derive(Debug)]
pub(super) struct FileWatch {
    /// The file's write-ahead log.
    wal: PathBuf,
    changed: Arc<Notify>,
    /// Whether the watch is armed (set by a waiter, cleared when it
    /// fires).
    armed: Arc<AtomicBool>,
    /// The watch, once started; `None` inside until then, or if it could
    /// not be set up.
    state: Mutex<Option<Option<imp::Watch>>>,
}

impl FileWatch {
    /// A watch on the database file `path` (not started yet).
    pub(super) fn new(path: &Path) -> Self {
        let mut wal = path.as_os_str().to_os_string();
        wal.push("-wal");
        FileWatch {
            wal: PathBuf::from(wal),
            changed: Arc::new(Notify::new()),
            armed: Arc::new(AtomicBool::new(false)),
            state: Mutex::new(None),
        }
    }

    /// Arms the watch (starting it on first use), so that the next write
    /// to the file's log wakes [`changed`](Self::changed); says whether it
    /// is armed. Call it after enabling the `changed` future and before the
    /// look it follows.
    pub(super) fn arm(&self) -> bool {
        if self.armed.load(Ordering::SeqCst) {
            return true;
        }
        let mut state = self.state.lock();
        let watch = state.get_or_insert_with(|| imp::Watch::start(&self.changed, &self.armed));
        if let Some(w) = watch
            && !self.armed.swap(true, Ordering::SeqCst)
            && !w.arm(&self.wal)
        {
            // No log yet (nothing committed), or no watch: poll.
            self.armed.store(false, Ordering::SeqCst);
        }
        self.armed.load(Ordering::SeqCst)
    }

    /// Woken by the first write to the file's log after [`arm`](Self::arm)
    /// (by any process). Create and `enable` it before arming.
    pub(super) fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }
}

#[cfg(target_os = "linux")]
mod imp {
    use std::os::fd::AsFd;
    use std::sync::Weak;

    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

    use super::*;

    /// How often the watching thread checks that the watch is still
    /// wanted (its handle not dropped).
    const ALIVE_CHECK_MS: u16 = 1000;

    /// An inotify instance, read by a thread of its own.
    #[derive(Debug)]
    pub(super) struct Watch {
        fd: Arc<Inotify>,
    }

    impl Watch {
        /// Starts the thread that wakes `changed`'s waiters (and clears
        /// `armed`) when the armed watch fires, until `changed` is
        /// dropped. `None` if inotify is not available.
        pub(super) fn start(changed: &Arc<Notify>, armed: &Arc<AtomicBool>) -> Option<Self> {
            let fd = match Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK) {
                Ok(fd) => Arc::new(fd),
                Err(e) => {
                    tracing::debug!(error = %e, "no inotify; the SQLite broker polls only");
                    return None;
                }
            };
            let changed = Arc::downgrade(changed);
            let armed = armed.clone();
            let reader = fd.clone();
            std::thread::Builder::new()
                .name("celeriac-sqlite-watch".to_string())
                .spawn(move || watch_loop(&reader, &changed, &armed))
                .ok()?;
            Some(Watch { fd })
        }

        /// Sets the one-shot watch on `wal`; false if it cannot be set.
        pub(super) fn arm(&self, wal: &Path) -> bool {
            self.fd
                .add_watch(wal, AddWatchFlags::IN_MODIFY | AddWatchFlags::IN_ONESHOT)
                .is_ok()
        }
    }

    fn watch_loop(fd: &Inotify, changed: &Weak<Notify>, armed: &AtomicBool) {
        loop {
            let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::from(ALIVE_CHECK_MS)) {
                Ok(0) => {
                    if changed.strong_count() == 0 {
                        return;
                    }
                }
                Ok(_) => {
                    match fd.read_events() {
                        // Fired (or removed): the next waiter arms it
                        // again. Cleared before the wake-up, so that a
                        // waiter that still saw it armed is woken.
                        Ok(_) => armed.store(false, Ordering::SeqCst),
                        Err(nix::errno::Errno::EAGAIN) => continue,
                        Err(e) => {
                            tracing::debug!(error = %e, "the inotify watch failed; polling only");
                            return;
                        }
                    }
                    match changed.upgrade() {
                        Some(n) => n.notify_waiters(),
                        None => return,
                    }
                }
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "polling the inotify watch failed; polling only");
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
    #[derive(Debug)]
    pub(super) struct Watch;

    impl Watch {
        pub(super) fn start(_: &Arc<Notify>, _: &Arc<AtomicBool>) -> Option<Self> {
            None
        }

        pub(super) fn arm(&self, _: &Path) -> bool {
            false
        }
    }
}
