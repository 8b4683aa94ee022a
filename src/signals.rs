//! SIGINT/SIGTERM (stop) and SIGHUP (reload policies), caught into flags that the control
//! thread polls. No crate: a handler that only stores to an atomic is async-signal-safe.

use std::ffi::c_int;
use std::sync::atomic::{AtomicBool, Ordering};

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
