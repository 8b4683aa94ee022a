//! Software prefetch: start loading a cache line without waiting for it.
//!
//! The data path handles a burst in stages (parse and hash all, then look up all) and
//! prefetches what the next stage will touch, so the cache misses of a burst's packets
//! overlap instead of following each other.

/// Ask the CPU to bring `r`'s cache line in, without waiting for it. (A plain load would
/// do the same but holds up retirement while it misses, which limits how many overlap.)
#[inline]
pub(crate) fn prefetch<T>(r: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint that never faults and has no architectural effect; the
    // address comes from a live reference anyway.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>((r as *const T).cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = r;
}
