//! Locks that outlive a panic.

use std::sync::{Mutex, MutexGuard};

/// Lock `mutex`, also when a thread panicked while holding it. The project's critical
/// sections are single map or counter updates that cannot stop halfway, so the data behind
/// a poisoned lock is whole, and refusing it would turn one panic into a stuck process.
pub fn lock<T: ?Sized>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
