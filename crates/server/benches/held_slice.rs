//! What the held thread's scheduler slice does to a well-behaved thread
//! on its CPU: a thread at nice 0 with the kernel's default slice is woken
//! every 700 µs from the other CPU, while a thread at nice 19 (the held
//! thread's nice value) works on its CPU in bursts of 300 µs. Measured:
//! the time from the wake-up's write to the woken thread running, with the
//! busy thread's slice the kernel's default (the baseline), the held
//! thread's (`HELD_SLICE`), the longest the kernel takes (100 ms), and the
//! serving threads' short one, in turns within one run.
//!
//!     cargo bench -p qm-ipc-server --bench held_slice [-- --quick]
//!
//! Needs two CPUs and a kernel with EEVDF's custom slices (Linux 6.12 and
//! later; on earlier ones every setting measures the same).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use qm_ipc_server::held_thread::HELD_SLICE;
use qm_ipc_server::scheduler_slice::set_slice;

const WAKE_EVERY: Duration = Duration::from_micros(700);
const BURST: Duration = Duration::from_micros(300);
const PAUSE: Duration = Duration::from_micros(100);

fn pin(cpu: usize) {
    // SAFETY: cpu_set_t is plain data set with the libc macros; pid 0 is
    // the calling thread.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    assert_eq!(
        rc,
        0,
        "pin to CPU {cpu}: {}",
        std::io::Error::last_os_error()
    );
}

/// Wake-up latencies (ns) of a nice-0 thread on CPU 0 beside a nice-19
/// thread with `slice` (zero: the kernel's) busy there.
fn measure(slice: Duration, wakeups: usize) -> Vec<u64> {
    let stop = Arc::new(AtomicBool::new(false));
    // The busy thread says it is set before anything is measured: a round
    // without it would measure nothing.
    let (set, is_set) = std::sync::mpsc::channel();
    let busy = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            pin(0);
            // SAFETY: setpriority on this thread's id changes it alone.
            let rc =
                unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 19) };
            assert_eq!(rc, 0, "nice 19: {}", std::io::Error::last_os_error());
            set_slice(slice).expect("sched_setattr");
            let _ = set.send(());
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                while t.elapsed() < BURST {
                    std::hint::spin_loop();
                }
                std::thread::sleep(PAUSE);
            }
        })
    };
    is_set
        .recv()
        .expect("the busy thread could not set its nice value or slice");
    let (mut waker, mut woken) = UnixStream::pair().expect("socket pair");
    let start = Instant::now();
    let wakes = std::thread::spawn(move || {
        pin(1);
        for _ in 0..wakeups {
            std::thread::sleep(WAKE_EVERY);
            let sent = start.elapsed().as_nanos() as u64;
            waker.write_all(&sent.to_le_bytes()).expect("wake");
        }
    });
    pin(0);
    let mut latencies = Vec::with_capacity(wakeups);
    let mut buf = [0u8; 8];
    for _ in 0..wakeups {
        woken.read_exact(&mut buf).expect("woken");
        let now = start.elapsed().as_nanos() as u64;
        latencies.push(now.saturating_sub(u64::from_le_bytes(buf)));
    }
    wakes.join().expect("the waking thread");
    stop.store(true, Ordering::Relaxed);
    busy.join().expect("the busy thread");
    latencies
}

fn quantile(sorted: &[u64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q) as usize] as f64 / 1000.0
}

fn main() {
    if std::thread::available_parallelism().map_or(1, |n| n.get()) < 2 {
        eprintln!("held_slice needs two CPUs: skipped");
        return;
    }
    let quick = std::env::args().any(|a| a == "--quick");
    let (rounds, wakeups) = if quick { (1, 500) } else { (3, 5000) };
    let settings = [
        ("the kernel's default (baseline)", Duration::ZERO),
        ("the held thread's (HELD_SLICE)", HELD_SLICE),
        (
            "the longest the kernel takes (100 ms)",
            Duration::from_millis(100),
        ),
        ("the serving threads' (100 µs)", Duration::from_micros(100)),
    ];
    println!("| busy nice-19 thread's slice | round | p50 µs | p90 µs | p99 µs | p99.9 µs | p99 / baseline |");
    println!("|---|---|---|---|---|---|---|");
    for round in 1..=rounds {
        let mut baseline = None;
        for (name, slice) in settings {
            let mut l = measure(slice, wakeups);
            l.sort_unstable();
            let p99 = quantile(&l, 0.99);
            let base = *baseline.get_or_insert(p99);
            println!(
                "| {name} | {round} | {:.1} | {:.1} | {p99:.1} | {:.1} | {:.2} |",
                quantile(&l, 0.5),
                quantile(&l, 0.9),
                quantile(&l, 0.999),
                p99 / base
            );
        }
    }
}
