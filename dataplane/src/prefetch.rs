//! Software prefetch: start loading a cache line without waiting for it.
//!
//! The data path handles a burst in stages (parse and hash all, then look up all) and
//! prefetches what the next stage will touch, so the cache misses of a burst's packets
//! overlap instead of following each other.

/// Ask the CPU to bring the cache line at `p` in, without waiting for it. (A plain load
/// would do the same but holds up retirement while it misses, which limits how many
/// overlap.) Any address will do, so callers need not bounds-check what may not be used;
/// but they must form it with wrapping arithmetic (`wrapping_add`): an out-of-bounds
/// `add` or index is undefined behaviour even if nothing is read through it.
#[inline]
pub(crate) fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint that never faults and has no architectural effect,
    // whatever the address.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>(p.cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}
