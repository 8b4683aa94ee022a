//! Keeping the busy-polling lcores undisturbed: sets of CPUs (the ones the lcores poll, and
//! the ones left for every other thread), and the drivers' signals kept off the lcores.

use std::ffi::c_int;
use std::fmt;
use std::io;
use std::marker::PhantomData;

/// 64-bit words in glibc's `cpu_set_t` (1024 CPUs).
const WORDS: usize = 16;

extern "C" {
    // glibc's wrappers: pid 0 is the calling thread; the mask is `size` bytes.
    fn sched_getaffinity(pid: c_int, size: usize, mask: *mut u64) -> c_int;
    fn sched_setaffinity(pid: c_int, size: usize, mask: *const u64) -> c_int;
    fn pthread_sigmask(how: c_int, set: *const SigSet, old: *mut SigSet) -> c_int;
    fn sigemptyset(set: *mut SigSet) -> c_int;
    fn sigaddset(set: *mut SigSet, signum: c_int) -> c_int;
    #[cfg(test)]
    fn sigismember(set: *const SigSet, signum: c_int) -> c_int;
    // What glibc's SIGRTMIN and SIGRTMAX macros call.
    fn __libc_current_sigrtmin() -> c_int;
    fn __libc_current_sigrtmax() -> c_int;
}

/// glibc's `sigset_t` (1024 bits).
#[repr(C)]
#[derive(Clone, Copy)]
struct SigSet([u64; 16]);

/// Linux's number for SIGIO (x86-64, arm64).
const SIGIO: c_int = 29;
const SIG_BLOCK: c_int = 0;
const SIG_SETMASK: c_int = 2;

/// While alive, the calling thread does not take SIGIO or the real-time signals: the
/// kernel hands them to another thread of the process that does (the EAL's interrupt
/// thread, the control thread).
///
/// net_tap asks the kernel for a signal whenever a tap has a packet to read (one a packet
/// under load): a free real-time signal in DPDK 22.11 (SIGRTMIN+1 here), SIGIO in older
/// releases. Its handler only bumps a counter that every RX burst reads, so any thread
/// may take it. But Linux gives a process-wide signal to the main thread whenever that
/// thread is running and does not block it, and qosgw's main thread is worker 0: it took
/// nearly every one, each a signal frame, handler and sigreturn in the middle of its loop.
#[must_use = "the signals are unblocked again when this is dropped"]
pub struct DriverSignalsBlocked {
    old: SigSet,
    // A signal mask belongs to one thread: the guard must be dropped where it was made.
    _not_send: PhantomData<*const ()>,
}

impl DriverSignalsBlocked {
    pub fn new() -> DriverSignalsBlocked {
        let mut set = SigSet([0; 16]);
        let mut old = SigSet([0; 16]);
        // SAFETY: set and old are valid sigset_t-sized buffers; sigemptyset and sigaddset
        // only write to set (sigaddset refuses glibc's internal signals); the sigrt calls
        // only read glibc's bounds; pthread_sigmask only changes the calling thread's mask
        // and writes the previous one to old.
        unsafe {
            sigemptyset(&mut set);
            sigaddset(&mut set, SIGIO);
            for sig in __libc_current_sigrtmin()..=__libc_current_sigrtmax() {
                sigaddset(&mut set, sig);
            }
            pthread_sigmask(SIG_BLOCK, &set, &mut old);
        }
        DriverSignalsBlocked {
            old,
            _not_send: PhantomData,
        }
    }
}

impl Default for DriverSignalsBlocked {
    fn default() -> Self {
        DriverSignalsBlocked::new()
    }
}

impl Drop for DriverSignalsBlocked {
    fn drop(&mut self) {
        // SAFETY: restores the mask saved in new(), on the thread that saved it (the guard
        // is not Send).
        unsafe { pthread_sigmask(SIG_SETMASK, &self.old, std::ptr::null_mut()) };
    }
}

/// A set of CPUs, laid out as glibc's `cpu_set_t` (CPU c is bit c % 64 of word c / 64).
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct CpuSet {
    words: [u64; WORDS],
}

impl CpuSet {
    /// The CPUs the calling thread may run on.
    pub fn of_current_thread() -> io::Result<CpuSet> {
        let mut set = CpuSet::default();
        // SAFETY: the mask is WORDS * 8 bytes, as `size` says; pid 0 is this thread.
        let ret = unsafe { sched_getaffinity(0, WORDS * 8, set.words.as_mut_ptr()) };
        if ret != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(set)
    }

    /// Restricts the calling thread (and the threads it starts afterwards, which inherit
    /// it) to these CPUs.
    pub fn pin_current_thread(&self) -> io::Result<()> {
        // SAFETY: the mask is WORDS * 8 bytes, as `size` says; pid 0 is this thread.
        let ret = unsafe { sched_setaffinity(0, WORDS * 8, self.words.as_ptr()) };
        if ret != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    pub(crate) fn from_words(words: [u64; WORDS]) -> CpuSet {
        CpuSet { words }
    }

    pub(crate) const fn words() -> usize {
        WORDS
    }

    /// The CPUs of `self` that are not in `other`.
    pub fn without(&self, other: &CpuSet) -> CpuSet {
        let mut out = *self;
        for (w, o) in out.words.iter_mut().zip(other.words) {
            *w &= !o;
        }
        out
    }

    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|&w| w == 0)
    }

    /// The CPUs in the set, in increasing order.
    pub fn cpus(&self) -> impl Iterator<Item = usize> + '_ {
        (0..WORDS * 64).filter(|&c| self.words[c / 64] & (1 << (c % 64)) != 0)
    }
}

impl FromIterator<usize> for CpuSet {
    /// CPUs beyond the set's 1024 are ignored.
    fn from_iter<I: IntoIterator<Item = usize>>(cpus: I) -> CpuSet {
        let mut set = CpuSet::default();
        for c in cpus.into_iter().filter(|&c| c < WORDS * 64) {
            set.words[c / 64] |= 1 << (c % 64);
        }
        set
    }
}

/// A CPU list as Linux prints one (`0`, `1,3`).
impl fmt::Display for CpuSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list: Vec<String> = self.cpus().map(|c| c.to_string()).collect();
        f.write_str(&list.join(","))
    }
}

impl fmt::Debug for CpuSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CpuSet({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_arithmetic() {
        let all: CpuSet = [0, 1, 2, 65, 1023].into_iter().collect();
        let lcores: CpuSet = [0, 65, 2000].into_iter().collect();
        let rest = all.without(&lcores);
        assert_eq!(rest.cpus().collect::<Vec<_>>(), [1, 2, 1023]);
        assert_eq!(rest.to_string(), "1,2,1023");
        assert!(!rest.is_empty());
        assert!(lcores.without(&all).is_empty());
    }

    /// Whether the calling thread blocks `sig`.
    fn blocked(sig: c_int) -> bool {
        let mut cur = SigSet([0; 16]);
        // SAFETY: a null set only reads the mask into cur, a sigset_t-sized buffer.
        unsafe {
            pthread_sigmask(SIG_BLOCK, std::ptr::null(), &mut cur);
            sigismember(&cur, sig) == 1
        }
    }

    #[test]
    fn driver_signals_are_blocked_while_the_guard_lives() {
        std::thread::spawn(|| {
            // SAFETY: reads glibc's bound only.
            let rt = unsafe { __libc_current_sigrtmin() } + 1;
            assert!(!blocked(SIGIO) && !blocked(rt));
            {
                let _guard = DriverSignalsBlocked::new();
                assert!(blocked(SIGIO) && blocked(rt));
                assert!(!blocked(2), "SIGINT stays with every thread");
            }
            assert!(!blocked(SIGIO) && !blocked(rt));
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_thread_can_be_pinned_to_its_own_cpus() {
        std::thread::spawn(|| {
            let mine = CpuSet::of_current_thread().unwrap();
            assert!(!mine.is_empty());
            let first: CpuSet = mine.cpus().take(1).collect();
            first.pin_current_thread().unwrap();
            assert_eq!(CpuSet::of_current_thread().unwrap(), first);
        })
        .join()
        .unwrap();
    }
}
