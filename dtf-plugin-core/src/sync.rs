//! The synchronisation primitives of the dispatch core (`bus/`).
//!
//! In a normal build these are `std`'s. Built with `RUSTFLAGS="--cfg dtf_shuttle"` they are
//! [shuttle](https://docs.rs/shuttle)'s, so the model check (`bus/model.rs`, run by `.ci/run`)
//! explores the interleavings of the very code that ships: every lock, atomic access and
//! fence below is a point where shuttle may switch threads. `OnceLock` has no shuttle
//! counterpart; [`switch`] marks its uses as scheduling points instead.

#[cfg(not(dtf_shuttle))]
pub(crate) use std::sync::Mutex;
#[cfg(not(dtf_shuttle))]
pub(crate) use std::sync::MutexGuard;
#[cfg(not(dtf_shuttle))]
pub(crate) use std::sync::atomic::{AtomicBool, AtomicU64, fence};

#[cfg(dtf_shuttle)]
pub(crate) use shuttle::sync::atomic::{AtomicBool, AtomicU64, fence};
#[cfg(dtf_shuttle)]
pub(crate) use shuttle::sync::{Mutex, MutexGuard};

/// A point where the model checker may switch threads (a no-op in a normal build).
#[inline(always)]
pub(crate) fn switch() {
    #[cfg(dtf_shuttle)]
    shuttle::thread::yield_now();
}
