//! SIGINT/SIGTERM (stop) and SIGHUP (reload policies), caught into flags: a thread of its
//! own turns a stop into the workers' stop flag ([`stop_on_signal`]), the control thread
//! polls for SIGHUP. No crate: a handler that only stores to an atomic is
//! async-signal-safe.

use std::ffi::c_int;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dataplane::dpdk::CpuSet;

static STOP: AtomicBool = AtomicBool::new(false);
static HANGUP: AtomicBool = AtomicBool::new(false);

const SIGHUP: c_int = 1;
const SIGINT: c_int = 2;
const SIGTERM: c_int = 15;

extern "C" {
    // glibc's signal() installs the handler with BSD semantics (SA_RESTART, not reset).
    fn signal(signum: c_int, handler: extern "C" fn(c_int)) -> usize;
}

extern "C" fn on_stop(_: c_int) {
    STOP.store(true, Ordering::SeqCst);
}

extern "C" fn on_hangup(_: c_int) {
    HANGUP.store(true, Ordering::SeqCst);
}

/// Installs the handlers. Call once, before starting threads that must not see the
/// default action (termination) of these signals.
pub fn install() {
    for (sig, handler) in [
        (SIGINT, on_stop as extern "C" fn(c_int)),
        (SIGTERM, on_stop),
        (SIGHUP, on_hangup),
    ] {
        // SAFETY: the handlers only store to atomics, which is async-signal-safe; the
        // signal numbers are Linux's; signal() has no other preconditions.
        unsafe { signal(sig, handler) };
    }
}

/// Whether SIGINT or SIGTERM arrived.
pub fn stop_requested() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// Whether SIGHUP arrived since the last call.
pub fn take_hangup() -> bool {
    HANGUP.swap(false, Ordering::SeqCst)
}

/// Raises `stop` when SIGINT or SIGTERM arrives, from a thread of its own (on `cpus`, off
/// the workers' when there are any): the control thread may be busy with a reload, and the
/// stop must not wait for it. The thread ends once `stop` is raised, by it or anyone.
pub fn stop_on_signal(stop: Arc<AtomicBool>, cpus: Option<CpuSet>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("qosgw-signals".into())
        .spawn(move || {
            if let Some(cpus) = cpus {
                let _ = cpus.pin_current_thread();
            }
            while !stop.load(Ordering::SeqCst) {
                if stop_requested() {
                    errln!("qosgw: stopping (signal)");
                    stop.store(true, Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
        .map(drop)
}
