//! An owned packet buffer.

use std::ptr::NonNull;

use super::{DpdkError, Mempool};

/// One packet (`rte_mbuf`, possibly a chain of segments), owned: dropping it frees it.
///
/// `repr(transparent)` over the pointer so a `Vec<Mbuf>` is an array of `rte_mbuf *` that
/// rx/tx bursts can fill and drain directly.
#[repr(transparent)]
#[derive(Debug)]
pub struct Mbuf {
    raw: NonNull<dpdk_sys::rte_mbuf>,
}

// SAFETY: an mbuf is owned by exactly one Mbuf value; moving it to another lcore hands
// the whole packet over, which is how DPDK pipelines pass packets between cores.
unsafe impl Send for Mbuf {}

impl Mbuf {
    /// Allocates an mbuf and copies `bytes` into it (chained segments if it needs more than
    /// one). For tests and benchmarks; the data path receives its mbufs from RX.
    pub fn from_bytes(pool: &Mempool, bytes: &[u8]) -> Result<Mbuf, DpdkError> {
        let head = Mbuf::alloc(pool)?;
        let mut rest = bytes;
        let mut tail = head.raw.as_ptr();
        loop {
            // SAFETY: tail is head or the segment we last chained to it; we own both.
            let room = unsafe { tailroom(tail) };
            let n = rest.len().min(room);
            // SAFETY: rte_pktmbuf_append extends the chain's last segment (tail) by
            // n <= its tailroom bytes, updates pkt_len, and returns where they start; we
            // write exactly n bytes there.
            unsafe {
                let dst = dpdk_sys::qosgw_pktmbuf_append(head.raw.as_ptr(), n as u16);
                std::ptr::copy_nonoverlapping(rest.as_ptr(), dst.cast::<u8>(), n);
            }
            rest = &rest[n..];
            if rest.is_empty() {
                return Ok(head);
            }
            let seg = Mbuf::alloc(pool)?;
            let seg = std::mem::ManuallyDrop::new(seg).raw.as_ptr();
            // SAFETY: tail is the last segment of head's chain; seg is a fresh single-segment
            // mbuf whose ownership moves into the chain (freed with head).
            unsafe {
                (*tail).next = seg;
                (*head.raw.as_ptr()).nb_segs += 1;
            }
            tail = seg;
        }
    }

    fn alloc(pool: &Mempool) -> Result<Mbuf, DpdkError> {
        // SAFETY: pool is a live pktmbuf pool.
        let raw = unsafe { dpdk_sys::qosgw_pktmbuf_alloc(pool.as_ptr()) };
        NonNull::new(raw)
            .map(|raw| Mbuf { raw })
            .ok_or_else(|| DpdkError::new("allocating an mbuf", "the mempool is empty"))
    }

    /// The whole packet's length, all segments.
    #[inline]
    pub fn pkt_len(&self) -> u32 {
        // SAFETY: we own a valid mbuf.
        unsafe { (*self.raw.as_ptr()).pkt_len }
    }

    /// Whether the whole packet is in the first segment.
    #[inline]
    pub fn is_contiguous(&self) -> bool {
        // SAFETY: we own a valid mbuf.
        unsafe { (*self.raw.as_ptr()).nb_segs == 1 }
    }

    /// The first segment's bytes (all of the packet when it is contiguous). Every header
    /// the dataplane reads sits in the first segment: DPDK's data room is 2 KiB or more.
    #[inline]
    pub fn data(&self) -> &[u8] {
        // SAFETY: buf_addr + data_off is the start of data_len initialised bytes that this
        // mbuf owns for as long as we borrow it.
        unsafe { segment_bytes(self.raw.as_ptr()) }
    }

    /// The first segment's bytes, writable.
    #[inline]
    pub fn data_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in data(); &mut self guarantees exclusive access (refcnt is 1: the
        // dataplane never clones mbufs, and the drivers it uses hand over plain ones).
        unsafe {
            let m = self.raw.as_ptr();
            debug_assert_eq!((*m).refcnt, 1, "a shared mbuf");
            let base = (*m).buf_addr.cast::<u8>().add((*m).data_off as usize);
            std::slice::from_raw_parts_mut(base, (*m).data_len as usize)
        }
    }

    /// Every segment's bytes, in order.
    pub fn segments(&self) -> impl Iterator<Item = &[u8]> + '_ {
        let mut seg = self.raw.as_ptr();
        std::iter::from_fn(move || {
            if seg.is_null() {
                return None;
            }
            // SAFETY: seg is this packet's head or a segment reached through `next`; all
            // are owned by this mbuf and live while it is borrowed.
            unsafe {
                let bytes = segment_bytes(seg);
                seg = (*seg).next;
                Some(bytes)
            }
        })
    }

    /// The whole packet copied into one vector (for tests and diagnostics).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.pkt_len() as usize);
        self.segments().for_each(|s| v.extend_from_slice(s));
        v
    }

    /// Takes ownership of a packet DPDK handed over (in an RX callback); `None` for a
    /// null pointer.
    ///
    /// # Safety
    /// `raw` is null or a valid mbuf that nothing else owns or will free.
    #[inline]
    pub(crate) unsafe fn from_raw(raw: *mut dpdk_sys::rte_mbuf) -> Option<Mbuf> {
        NonNull::new(raw).map(|raw| Mbuf { raw })
    }

    /// Gives up ownership, for handing the packet to a TX queue.
    #[inline]
    pub(crate) fn into_raw(self) -> *mut dpdk_sys::rte_mbuf {
        std::mem::ManuallyDrop::new(self).raw.as_ptr()
    }
}

impl Drop for Mbuf {
    #[inline]
    fn drop(&mut self) {
        // SAFETY: we own the mbuf (and its chain); rte_pktmbuf_free frees every segment.
        unsafe { dpdk_sys::qosgw_pktmbuf_free(self.raw.as_ptr()) };
    }
}

/// # Safety
/// `m` must be a valid mbuf segment that outlives `'a`.
#[inline]
unsafe fn segment_bytes<'a>(m: *const dpdk_sys::rte_mbuf) -> &'a [u8] {
    let base = (*m).buf_addr.cast::<u8>().add((*m).data_off as usize);
    std::slice::from_raw_parts(base, (*m).data_len as usize)
}

/// Free bytes after a segment's data.
///
/// # Safety
/// `m` must be a valid mbuf segment.
unsafe fn tailroom(m: *const dpdk_sys::rte_mbuf) -> usize {
    usize::from((*m).buf_len) - usize::from((*m).data_off) - usize::from((*m).data_len)
}
