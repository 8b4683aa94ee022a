//! Sets of CPUs: the ones the lcores busy-poll, and the ones left for every other thread.

use std::ffi::c_int;
use std::fmt;
use std::io;

/// 64-bit words in glibc's `cpu_set_t` (1024 CPUs).
const WORDS: usize = 16;

extern "C" {
    // glibc's wrappers: pid 0 is the calling thread; the mask is `size` bytes.
    fn sched_getaffinity(pid: c_int, size: usize, mask: *mut u64) -> c_int;
    fn sched_setaffinity(pid: c_int, size: usize, mask: *const u64) -> c_int;
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
