//! The crate's one way to take a mutex whose holder panicked: every lock here guards plain data
//! that stays consistent between statements, so a poisoned lock is recovered instead of spreading
//! the panic to the thread that happens to take it next.

use std::sync::{Mutex, MutexGuard};

/// Locks `mutex`, recovering the guard if a thread panicked while holding it.
pub(crate) fn lock_recovering<T: ?Sized>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poisoned_lock_is_recovered_with_its_data() {
        let mutex = Mutex::new(7);
        let _ = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let _guard = mutex.lock().unwrap();
                    panic!("poison the lock");
                })
                .join()
        });
        assert!(mutex.is_poisoned());
        assert_eq!(*lock_recovering(&mutex), 7);
    }
}
