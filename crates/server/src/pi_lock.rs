//! The lock the ASIL thread shares with the QM side (the broker's, each
//! outbox's): priority-inheriting, on a PI futex, with a short spin before
//! the kernel.
//!
//! Priority inheritance: a QM-side thread (the QM thread, or the held
//! thread at nice 19) holding the lock when a real-time ASIL thread asks
//! for it runs at the ASIL thread's priority until it lets go, instead of
//! waiting off the CPU behind whatever outranks it. With std's `Mutex`,
//! phases 1 to 3 of one interference benchmark run kept the ASIL thread
//! waiting for the broker's lock over 50 µs 30 times, up to 2 ms.
//!
//! The spin: `priority-inheriting-lock`'s lock, on the same futex, asks
//! the kernel (`FUTEX_LOCK_PI`) at the first contention, and a handoff
//! through the kernel costs a wake-up on these machines. With it the
//! longest wait fell to 138 µs, but 95 waits took over 50 µs where the
//! holder was about to let go. So a contended lock is first watched for
//! 100 reads (a few microseconds at most), as std's `Mutex` does; the
//! critical sections under it are map updates and queue appends that never
//! wait for a peer.
//!
//! Not reentrant: a thread that takes it twice panics (the kernel answers
//! `EDEADLK`, on which `linux-futex` panics), where std's `Mutex` would
//! hang. A kernel without PI futexes would panic the same way at the first
//! contended lock, so the gateway asks the kernel at start
//! ([`kernel_support`]) and stops there, saying why.

use std::sync::atomic::{fence, Ordering};

use linux_futex::{PiFutex, Private};

/// Reads of the lock word before asking the kernel: as many as std's
/// `Mutex` spins.
const SPINS: u32 = 100;

/// The thread-id bits of the futex word (`FUTEX_TID_MASK`).
const TID_MASK: u32 = 0x3fff_ffff;

thread_local! {
    /// The futex word holds its owner's thread id. Never 0 (free): a
    /// failed gettid would let every thread in at once, so it panics.
    static TID: u32 = {
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::syscall(libc::SYS_gettid) };
        u32::try_from(tid)
            .ok()
            .filter(|t| (1..=TID_MASK).contains(t))
            .unwrap_or_else(|| panic!("gettid gave {tid}: no thread id for a PI futex"))
    };
}

fn tid() -> u32 {
    TID.with(|t| *t)
}

/// A PI futex whose word is 0 when free, else its owner's thread id (with
/// the kernel's waiters bit when someone waits in the kernel).
pub struct RawPiLock(PiFutex<Private>);

impl RawPiLock {
    fn try_fast(&self, tid: u32) -> bool {
        self.0
            .value
            .compare_exchange(0, tid, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }
}

// SAFETY: the futex word is taken only by a compare-exchange from 0 to the
// caller's thread id, or by the kernel's FUTEX_LOCK_PI/TRYLOCK_PI, which
// hand it to exactly one thread; it is released only by its owner, from its
// thread id back to 0 or through FUTEX_UNLOCK_PI (which hands it to the
// highest waiter). GuardNoSend keeps the guard on the owner's thread.
unsafe impl lock_api::RawMutex for RawPiLock {
    #[allow(clippy::declare_interior_mutable_const)]
    const INIT: Self = Self(PiFutex::new(0));

    type GuardMarker = lock_api::GuardNoSend;

    fn lock(&self) {
        let tid = tid();
        if self.try_fast(tid) {
            return;
        }
        for _ in 0..SPINS {
            std::hint::spin_loop();
            if self.0.value.load(Ordering::Relaxed) == 0 && self.try_fast(tid) {
                return;
            }
        }
        // The kernel queues us by priority and lends ours to the owner.
        // It answers EAGAIN while the owner is exiting: ask again.
        while self.0.lock_pi().is_err() {}
        fence(Ordering::Acquire);
    }

    fn try_lock(&self) -> bool {
        let tid = tid();
        if self.try_fast(tid) {
            return true;
        }
        // Already ours: not reentrant (the kernel would answer EDEADLK).
        if self.0.value.load(Ordering::Relaxed) & TID_MASK == tid {
            return false;
        }
        let taken = self.0.trylock_pi().is_ok();
        if taken {
            fence(Ordering::Acquire);
        }
        taken
    }

    fn is_locked(&self) -> bool {
        self.0.value.load(Ordering::Relaxed) != 0
    }

    unsafe fn unlock(&self) {
        let released =
            self.0
                .value
                .compare_exchange(tid(), 0, Ordering::Release, Ordering::Relaxed);
        if released.is_err() {
            // Waiters in the kernel: it hands the lock to the highest.
            fence(Ordering::Release);
            self.0.unlock_pi();
        }
    }
}

/// Does the kernel take PI futexes from this process? Locks and unlocks one
/// of its own through the kernel (`FUTEX_TRYLOCK_PI`, `FUTEX_UNLOCK_PI`):
/// `ENOSYS` where the kernel was built without them, `EPERM` or `ENOSYS`
/// where a system call filter refuses them.
pub fn kernel_support() -> std::io::Result<()> {
    let word = std::sync::atomic::AtomicU32::new(0);
    for op in [libc::FUTEX_TRYLOCK_PI, libc::FUTEX_UNLOCK_PI] {
        // SAFETY: a futex operation on a word of our own that lives until
        // the end of this function; the kernel sets it to our thread id
        // and back to 0.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_futex,
                word.as_ptr(),
                op | libc::FUTEX_PRIVATE_FLAG,
                0,
                0,
                0,
                0,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// A priority-inheriting mutex (no poisoning: its users leave their state
/// consistent between statements).
pub type PiLock<T> = lock_api::Mutex<RawPiLock, T>;
pub type PiLockGuard<'a, T> = lock_api::MutexGuard<'a, RawPiLock, T>;

#[cfg(test)]
mod tests {
    use super::*;
    use lock_api::RawMutex as _;

    #[test]
    fn the_kernel_takes_pi_futexes() {
        kernel_support().expect("PI futexes (the gateway would not start without them)");
    }

    #[test]
    fn the_owner_cannot_take_it_again_and_others_wait() {
        let lock = RawPiLock::INIT;
        lock.lock();
        assert!(lock.is_locked());
        assert!(!lock.try_lock(), "not reentrant, and no panic for asking");
        let lock = std::sync::Arc::new(PiLock::new(0u32));
        let guard = lock.lock();
        let (tried, has_tried) = std::sync::mpsc::channel();
        let other = {
            let lock = lock.clone();
            std::thread::spawn(move || {
                let free = lock.try_lock().is_some();
                tried.send(()).expect("the main thread waits");
                assert!(!free, "held by the main thread");
                *lock.lock() += 1;
            })
        };
        has_tried
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the other thread tried");
        drop(guard);
        other.join().expect("the other thread");
        assert_eq!(*lock.lock(), 1);
    }
}
