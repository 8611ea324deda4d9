//! Determinism: inside a run, the process's clocks follow simulated time and its randomness
//! follows the seed.
//!
//! Simulated hosts use tokio's paused clock, which turmoil advances; code that reads the
//! operating system's clocks instead (`std::time::Instant`, `SystemTime`, the seeds of
//! `HashMap` and of thread-local random generators) would make two runs of one seed differ.
//! This module defines `clock_gettime`, `getrandom` and `getentropy` for the simulator's
//! executables, overriding the C library's: while a run is active (between [`activate`] and
//! [`deactivate`]) they answer from the run's simulated time and seeded generator; otherwise
//! they go to the kernel. The simulator's own wall-clock measurements use [`wall_now`], which
//! always asks the kernel.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::rng::SimRng;

static ACTIVE: AtomicBool = AtomicBool::new(false);
/// Simulated time since the run started, in nanoseconds; set by the run loop every step.
static SIM_NANOS: AtomicU64 = AtomicU64::new(0);
static RNG: Mutex<Option<SimRng>> = Mutex::new(None);

/// The monotonic clock of a run starts here (an arbitrary, fixed point).
const MONOTONIC_BASE_SECS: u64 = 1_000_000;
/// The wall clock of a run starts at 2026-01-01T00:00:00Z.
const REALTIME_BASE_SECS: u64 = 1_767_225_600;

/// Starts answering clocks and randomness from the run seeded with `seed`.
pub fn activate(seed: u64) {
    *RNG.lock().unwrap_or_else(|p| p.into_inner()) = Some(SimRng::new(seed ^ 0x005e_ed0f_c10c));
    SIM_NANOS.store(0, Ordering::SeqCst);
    ACTIVE.store(true, Ordering::SeqCst);
}

/// Goes back to the kernel's clocks and randomness.
pub fn deactivate() {
    ACTIVE.store(false, Ordering::SeqCst);
    *RNG.lock().unwrap_or_else(|p| p.into_inner()) = None;
}

/// Sets the simulated time the clocks answer.
pub fn set_sim_time(elapsed: Duration) {
    SIM_NANOS.store(elapsed.as_nanos() as u64, Ordering::SeqCst);
}

/// The kernel's monotonic clock, whatever the run does.
pub fn wall_now() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid timespec for the kernel to fill.
    unsafe { libc::syscall(libc::SYS_clock_gettime, libc::CLOCK_MONOTONIC, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn sim_clock(base_secs: u64) -> libc::timespec {
    let nanos = SIM_NANOS.load(Ordering::SeqCst);
    libc::timespec {
        tv_sec: (base_secs + nanos / 1_000_000_000) as libc::time_t,
        tv_nsec: (nanos % 1_000_000_000) as libc::c_long,
    }
}

/// `clock_gettime(3)`, answering from simulated time during a run.
///
/// # Safety
/// `tp` must be valid for a write of one `timespec`, as for the C function.
#[no_mangle]
pub unsafe extern "C" fn clock_gettime(
    clockid: libc::clockid_t,
    tp: *mut libc::timespec,
) -> libc::c_int {
    if ACTIVE.load(Ordering::SeqCst) && !tp.is_null() {
        let answer = match clockid {
            libc::CLOCK_REALTIME | libc::CLOCK_REALTIME_COARSE => {
                Some(sim_clock(REALTIME_BASE_SECS))
            }
            libc::CLOCK_MONOTONIC
            | libc::CLOCK_MONOTONIC_RAW
            | libc::CLOCK_MONOTONIC_COARSE
            | libc::CLOCK_BOOTTIME => Some(sim_clock(MONOTONIC_BASE_SECS)),
            _ => None,
        };
        if let Some(ts) = answer {
            // SAFETY: the caller passes a writable timespec.
            unsafe { tp.write(ts) };
            return 0;
        }
    }
    // SAFETY: forwards the caller's arguments to the kernel unchanged.
    unsafe { libc::syscall(libc::SYS_clock_gettime, clockid, tp) as libc::c_int }
}

/// `getrandom(2)`'s C library wrapper, answering from the run's generator during a run.
///
/// # Safety
/// `buf` must be valid for writes of `buflen` bytes, as for the C function.
#[no_mangle]
pub unsafe extern "C" fn getrandom(buf: *mut u8, buflen: usize, flags: u32) -> isize {
    if buflen == 0 {
        return 0;
    }
    if ACTIVE.load(Ordering::SeqCst) && !buf.is_null() {
        if let Some(rng) = RNG.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            // SAFETY: the caller passes `buflen` writable bytes.
            let dest = unsafe { std::slice::from_raw_parts_mut(buf, buflen) };
            rng.fill(dest);
            return buflen as isize;
        }
    }
    // SAFETY: forwards the caller's arguments to the kernel unchanged.
    unsafe { libc::syscall(libc::SYS_getrandom, buf, buflen, flags) as isize }
}

/// `getentropy(3)`, through [`getrandom`].
///
/// # Safety
/// `buf` must be valid for writes of `buflen` bytes, as for the C function.
#[no_mangle]
pub unsafe extern "C" fn getentropy(buf: *mut u8, buflen: usize) -> libc::c_int {
    if buflen > 256 {
        return -1;
    }
    // SAFETY: same contract as ours.
    if unsafe { getrandom(buf, buflen, 0) } == buflen as isize {
        0
    } else {
        -1
    }
}
