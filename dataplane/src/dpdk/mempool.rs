//! Packet buffer pools.

use std::ffi::CString;
use std::ptr::NonNull;

use super::{DpdkError, Eal};

/// A pool of packet buffers (`rte_pktmbuf_pool_create`), freed on drop if every [`Mbuf`]
/// taken from it is back (the ports that use it are dropped before it, and the workers
/// empty what they hold when they stop); otherwise it is left allocated, so that no mbuf
/// still held, or still in a device's ring, ever points into freed memory.
///
/// [`Mbuf`]: super::Mbuf
#[derive(Debug)]
pub struct Mempool {
    raw: NonNull<dpdk_sys::rte_mempool>,
    data_room: u16,
}

// SAFETY: a DPDK mempool is designed for concurrent use by many lcores (its ring is
// multi-producer/multi-consumer); the handle is just a pointer to it.
unsafe impl Send for Mempool {}
// SAFETY: as above; all operations through &Mempool are thread-safe in DPDK.
unsafe impl Sync for Mempool {}

impl Mempool {
    /// Creates a pool of `count` mbufs with `data_room` bytes each (headroom included),
    /// with a per-lcore cache of `cache` mbufs.
    pub fn new(
        _eal: &Eal,
        name: &str,
        count: u32,
        cache: u32,
        data_room: u16,
    ) -> Result<Mempool, DpdkError> {
        let cname = CString::new(name)
            .map_err(|_| DpdkError::new("mempool name", "contains a NUL byte"))?;
        // SAFETY: the EAL is initialised (we hold &Eal); cname is a valid C string for
        // the duration of the call. SOCKET_ID_ANY is -1.
        let raw = unsafe {
            dpdk_sys::rte_pktmbuf_pool_create(cname.as_ptr(), count, cache, 0, data_room, -1)
        };
        NonNull::new(raw)
            .map(|raw| Mempool { raw, data_room })
            .ok_or_else(|| {
                DpdkError::from_errno(format!("creating mempool {name} of {count} mbufs"))
            })
    }

    /// Bytes of packet data an mbuf holds after DPDK's default headroom.
    pub fn data_len(&self) -> u32 {
        u32::from(self.data_room).saturating_sub(128)
    }

    pub(crate) fn as_ptr(&self) -> *mut dpdk_sys::rte_mempool {
        self.raw.as_ptr()
    }
}

impl Drop for Mempool {
    fn drop(&mut self) {
        // SAFETY: we own the pool; counting reads its ring and per-lcore caches.
        if unsafe { dpdk_sys::rte_mempool_in_use_count(self.raw.as_ptr()) } != 0 {
            return;
        }
        // SAFETY: we own the pool and no mbuf of it is in use.
        unsafe { dpdk_sys::rte_mempool_free(self.raw.as_ptr()) };
    }
}
