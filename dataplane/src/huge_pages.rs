//! Transparent huge pages for the big per-worker tables (flow cache, shaper instances).
//!
//! With a million flows every packet touches a random line of ~100 MB of tables; on 4 KiB
//! pages each such access also misses the TLB and walks the page tables, which costs as
//! much as the cache miss itself. These machines run the kernel's transparent huge pages
//! in `madvise` mode (`/sys/kernel/mm/transparent_hugepage/enabled`), so the tables ask
//! for 2 MiB pages; where the kernel says no, they keep ordinary ones.

use std::ffi::{c_int, c_void};

const HUGE_PAGE: usize = 2 << 20;

/// A vector with room for `capacity` items, whose memory the kernel is asked to back with
/// huge pages. Ask before the memory is first written: pages already there stay small.
pub fn vec_with_capacity<T>(capacity: usize) -> Vec<T> {
    let v: Vec<T> = Vec::with_capacity(capacity);
    advise(v.as_ptr().cast(), v.capacity() * std::mem::size_of::<T>());
    v
}

/// `madvise(MADV_HUGEPAGE)` over the whole huge pages inside `[start, start + len)`.
fn advise(start: *const u8, len: usize) {
    let begin = (start as usize).next_multiple_of(HUGE_PAGE);
    let end = (start as usize + len) / HUGE_PAGE * HUGE_PAGE;
    if end <= begin {
        return;
    }
    #[cfg(target_os = "linux")]
    {
        extern "C" {
            fn madvise(addr: *mut c_void, len: usize, advice: c_int) -> c_int;
        }
        const MADV_HUGEPAGE: c_int = 14;
        // SAFETY: madvise only advises the kernel how to back the range; the range is
        // page aligned and lies inside an allocation this process owns. A refusal (THP
        // disabled) is harmless: the pages stay small.
        unsafe { madvise(begin as *mut c_void, end - begin, MADV_HUGEPAGE) };
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (begin, end);
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_large_vector_keeps_its_capacity_and_works() {
        let mut v: Vec<u64> = super::vec_with_capacity(1 << 20);
        assert!(v.capacity() >= 1 << 20);
        v.extend(0..1 << 20);
        assert_eq!(v[12345], 12345);
        let small: Vec<u8> = super::vec_with_capacity(10);
        assert!(small.capacity() >= 10);
    }
}
