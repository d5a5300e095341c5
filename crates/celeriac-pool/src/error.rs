//! Error types of the pool.

use std::any::Any;
use std::fmt;

/// A task panicked instead of returning a value.
///
/// Carries the panic message: the payload of `panic!("...")` is a `&'static
/// str` or a `String`; any other payload (from `std::panic::panic_any`) is
/// reported as `"Box<dyn Any>"`.
///
/// # Examples
///
/// ```
/// use celeriac_pool::ThreadPool;
///
/// let pool = ThreadPool::builder().threads(1).build().unwrap();
/// let handle = pool.execute(|| -> u32 { panic!("boom") }).unwrap();
/// let err = handle.join().unwrap_err();
/// assert_eq!(err.message(), "boom");
/// assert_eq!(err.to_string(), "task panicked: boom");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("task panicked: {message}")]
pub struct Panicked {
    message: String,
}

impl Panicked {
    /// Creates a `Panicked` error with the given message.
    ///
    /// # Examples
    ///
    /// ```
    /// use celeriac_pool::Panicked;
    ///
    /// assert_eq!(Panicked::new("oops").message(), "oops");
    /// ```
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }

    /// Builds the error from a panic payload as returned by
    /// [`std::panic::catch_unwind`].
    ///
    /// # Examples
    ///
    /// ```
    /// use celeriac_pool::Panicked;
    ///
    /// let payload = std::panic::catch_unwind(|| panic!("bad {}", 1)).unwrap_err();
    /// assert_eq!(Panicked::from_payload(payload).message(), "bad 1");
    /// ```
    pub fn from_payload(payload: Box<dyn Any + Send>) -> Self {
        let message = if let Some(s) = payload.downcast_ref::<&'static str>() {
            (*s).to_owned()
        } else if let Some(s) = payload.downcast_ref::<String>() {
            s.clone()
        } else {
            "Box<dyn Any>".to_owned()
        };
        // Dropping an arbitrary payload may itself panic; never let that
        // escape into a worker thread.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(payload)));
        Self { message }
    }

    /// The panic message.
    ///
    /// # Examples
    ///
    /// ```
    /// use celeriac_pool::Panicked;
    ///
    /// assert_eq!(Panicked::new("x").message(), "x");
    /// ```
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Consumes the error and returns the panic message.
    ///
    /// # Examples
    ///
    /// ```
    /// use celeriac_pool::Panicked;
    ///
    /// assert_eq!(Panicked::new("x").into_message(), "x".to_string());
    /// ```
    pub fn into_message(self) -> String {
        self.message
    }
}

/// The pool is shut down and accepts no new work; the rejected closure is
/// handed back.
///
/// Returned by [`ThreadPool::spawn`](crate::ThreadPool::spawn) and
/// [`ThreadPool::execute`](crate::ThreadPool::execute) once
/// [`ThreadPool::shutdown`](crate::ThreadPool::shutdown) was called or the
/// last handle was dropped.
///
/// # Examples
///
/// ```
/// use celeriac_pool::ThreadPool;
///
/// let pool = ThreadPool::builder().threads(1).build().unwrap();
/// pool.shutdown();
/// let err = pool.spawn(|| println!("never runs")).unwrap_err();
/// assert_eq!(err.to_string(), "thread pool is shut down");
/// let closure = err.into_inner(); // the closure, not run
/// # let _ = closure;
/// ```
#[derive(thiserror::Error)]
#[error("thread pool is shut down")]
pub struct ShutdownError<F>(pub(crate) F);

impl<F> ShutdownError<F> {
    /// Returns the closure that was not accepted.
    ///
    /// # Examples
    ///
    /// ```
    /// use celeriac_pool::ThreadPool;
    ///
    /// let pool = ThreadPool::builder().threads(1).build().unwrap();
    /// pool.shutdown();
    /// let f = pool.execute(|| 41 + 1).unwrap_err().into_inner();
    /// assert_eq!(f(), 42);
    /// ```
    pub fn into_inner(self) -> F {
        self.0
    }
}

impl<F> fmt::Debug for ShutdownError<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ShutdownError").finish_non_exhaustive()
    }
}

/// Building a [`ThreadPool`](crate::ThreadPool) failed.
///
/// # Examples
///
/// ```
/// use celeriac_pool::{BuildError, ThreadPool};
///
/// let err = ThreadPool::builder().threads(0).build().unwrap_err();
/// assert!(matches!(err, BuildError::ZeroThreads));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// A pool needs at least one thread.
    #[error("a thread pool needs at least one thread")]
    ZeroThreads,
    /// The operating system refused to start a worker thread.
    #[error("failed to spawn a worker thread: {0}")]
    Spawn(#[source] std::io::Error),
}

/// Resizing a [`ThreadPool`](crate::ThreadPool) with
/// [`set_threads`](crate::ThreadPool::set_threads) failed.
///
/// # Examples
///
/// ```
/// use celeriac_pool::{ResizeError, ThreadPool};
///
/// let pool = ThreadPool::builder().threads(1).build().unwrap();
/// assert!(matches!(pool.set_threads(0), Err(ResizeError::ZeroThreads)));
/// pool.shutdown();
/// assert!(matches!(pool.set_threads(2), Err(ResizeError::ShutDown)));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ResizeError {
    /// A pool needs at least one thread.
    #[error("a thread pool needs at least one thread")]
    ZeroThreads,
    /// The pool is shut down.
    #[error("thread pool is shut down")]
    ShutDown,
    /// The operating system refused to start a worker thread. The pool keeps
    /// the threads it has; its target becomes the number of live threads.
    #[error("failed to spawn a worker thread: {0}")]
    Spawn(#[source] std::io::Error),
}
