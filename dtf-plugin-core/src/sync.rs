//! The synchronisation primitives of the dispatch core (`bus/`).
//!
//! In a normal build these are `std`'s (and tokio's `Notify`). Two model checks swap them, so
//! that they explore the interleavings of the very code that ships (see `docs/model-check.md`):
//!
//! - `RUSTFLAGS="--cfg dtf_shuttle"`: [shuttle](https://docs.rs/shuttle)'s locks, atomics and
//!   fence, each a point where shuttle may switch threads. Schedules are sequentially
//!   consistent. `OnceLock` has no shuttle counterpart; [`switch`] marks its uses as
//!   scheduling points instead.
//! - `RUSTFLAGS="--cfg dtf_loom"`: [loom](https://docs.rs/loom)'s, which also explores what
//!   weak memory lets a load see. `OnceLock` is then std's guarded by a loom flag written with
//!   `Release` and read with `Acquire` (the ordering `OnceLock` itself gives), and `Notify` is
//!   a small one built on loom's lock (tokio's internals are invisible to loom).

#[cfg(not(any(dtf_shuttle, dtf_loom)))]
pub(crate) use std::sync::atomic::{AtomicBool, AtomicU64, fence};
#[cfg(not(any(dtf_shuttle, dtf_loom)))]
pub(crate) use std::sync::{Mutex, MutexGuard};

#[cfg(dtf_shuttle)]
pub(crate) use shuttle::sync::atomic::{AtomicBool, AtomicU64, fence};
#[cfg(dtf_shuttle)]
pub(crate) use shuttle::sync::{Mutex, MutexGuard};

#[cfg(dtf_loom)]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicU64, fence};
#[cfg(dtf_loom)]
pub(crate) use loom::sync::{Mutex, MutexGuard};

#[cfg(not(dtf_loom))]
pub(crate) use std::sync::OnceLock;
#[cfg(not(dtf_loom))]
pub(crate) use tokio::sync::Notify;

#[cfg(dtf_loom)]
pub(crate) use loom_only::{Notify, OnceLock};

/// Whether this is a model check's build: the log's sizes shrink so that a few events cross
/// segment, chunk and lag boundaries.
pub(crate) const MODEL: bool = cfg!(any(dtf_shuttle, dtf_loom));

/// A point where the model checker may switch threads (a no-op in a normal build; loom
/// switches only at its own operations).
#[inline(always)]
pub(crate) fn switch() {
    #[cfg(dtf_shuttle)]
    shuttle::thread::yield_now();
}

#[cfg(dtf_loom)]
mod loom_only {
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::PoisonError;
    use std::sync::atomic::Ordering;
    use std::task::{Context, Poll, Waker};

    use loom::sync::Mutex;
    use loom::sync::atomic::AtomicBool;

    /// `std`'s `OnceLock` whose publication loom sees: `set` stores a flag with `Release`
    /// after writing the value, `get` reads it with `Acquire` first.
    pub(crate) struct OnceLock<T> {
        value: std::sync::OnceLock<T>,
        ready: AtomicBool,
    }

    impl<T> OnceLock<T> {
        pub(crate) fn new() -> Self {
            Self {
                value: std::sync::OnceLock::new(),
                ready: AtomicBool::new(false),
            }
        }

        pub(crate) fn get(&self) -> Option<&T> {
            if self.ready.load(Ordering::Acquire) {
                self.value.get()
            } else {
                None
            }
        }

        pub(crate) fn set(&self, value: T) -> Result<(), T> {
            self.value.set(value)?;
            self.ready.store(true, Ordering::Release);
            Ok(())
        }

        pub(crate) fn into_inner(self) -> Option<T> {
            self.value.into_inner()
        }
    }

    /// The part of tokio's `Notify` the bus uses (`notified`, `enable`, `notify_waiters`),
    /// with the same promise: `notify_waiters` completes every `Notified` created before it.
    #[derive(Default)]
    pub(crate) struct Notify {
        state: Mutex<State>,
    }

    #[derive(Default)]
    struct State {
        /// Calls of `notify_waiters` so far.
        calls: u64,
        wakers: Vec<Waker>,
    }

    impl Notify {
        pub(crate) fn new() -> Self {
            Self::default()
        }

        fn state(&self) -> loom::sync::MutexGuard<'_, State> {
            self.state.lock().unwrap_or_else(PoisonError::into_inner)
        }

        pub(crate) fn notified(&self) -> Notified<'_> {
            Notified {
                notify: self,
                calls: self.state().calls,
            }
        }

        pub(crate) fn notify_waiters(&self) {
            let wakers = {
                let mut state = self.state();
                state.calls += 1;
                std::mem::take(&mut state.wakers)
            };
            for waker in wakers {
                waker.wake();
            }
        }
    }

    /// A wait for the next `notify_waiters` after its creation.
    pub(crate) struct Notified<'a> {
        notify: &'a Notify,
        calls: u64,
    }

    impl Notified<'_> {
        /// Registered from creation on: nothing to do.
        pub(crate) fn enable(self: Pin<&mut Self>) -> bool {
            false
        }
    }

    impl Future for Notified<'_> {
        type Output = ();

        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            let mut state = self.notify.state();
            if state.calls != self.calls {
                return Poll::Ready(());
            }
            state.wakers.push(cx.waker().clone());
            Poll::Pending
        }
    }
}
