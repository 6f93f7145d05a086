//! A thread's scheduler slice, which the QM, ASIL and held threads set
//! for themselves (see `held_thread::HELD_SLICE` and
//! `qm-ipc serve --serving-slice-us`).

use std::io;

/// Sets the calling thread's scheduler slice (`SCHED_OTHER`'s custom slice,
/// Linux 6.12 and later; the kernel clamps it to 0.1-100 ms; zero goes back
/// to the kernel's default), keeping its nice value. Under EEVDF a thread
/// with a shorter slice than the running one gets an earlier deadline, so
/// on waking it preempts it rather than wait for the running thread's
/// slice to end. Earlier kernels take the call and ignore the slice.
pub fn set_slice(slice: std::time::Duration) -> io::Result<()> {
    /// `struct sched_attr` (include/uapi/linux/sched/types.h), version 1.
    #[repr(C)]
    #[derive(Default)]
    struct SchedAttr {
        size: u32,
        sched_policy: u32,
        sched_flags: u64,
        sched_nice: i32,
        sched_priority: u32,
        sched_runtime: u64,
        sched_deadline: u64,
        sched_period: u64,
        sched_util_min: u32,
        sched_util_max: u32,
    }
    // SAFETY: getpriority and gettid have no preconditions; errno is
    // cleared first, as getpriority may return -1 as a value.
    let nice = unsafe {
        *libc::__errno_location() = 0;
        libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t)
    };
    let attr = SchedAttr {
        size: std::mem::size_of::<SchedAttr>() as u32,
        sched_policy: libc::SCHED_OTHER as u32,
        sched_nice: nice,
        sched_runtime: slice.as_nanos().min(u64::MAX as u128) as u64,
        ..Default::default()
    };
    // SAFETY: attr is a valid, fully initialised sched_attr of the size it
    // states; pid 0 is the calling thread; flags 0.
    let rc = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &attr as *const SchedAttr, 0) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
