//! The safe layer over DPDK: EAL, mempools, ports and mbufs.
//!
//! This is the only module that touches a raw DPDK pointer. Foreign resources are Rust
//! types whose `Drop` releases them: an [`Mbuf`] is freed, a [`Port`] is stopped and
//! closed (which is what makes net_pcap write its output file), a [`Mempool`] is freed.

mod cpus;
mod eal;
mod mbuf;
mod mempool;
mod port;

use std::ffi::CStr;
use std::fmt;

pub use cpus::{CpuSet, DriverSignalsBlocked};
pub use eal::{lcores_arg, tsc, virtual_device_args, Eal};
pub use mbuf::Mbuf;
pub use mempool::Mempool;
pub use port::{
    rx_buffer_for, Link, OpenedPort, Port, PortStats, RxQueue, TxQueue, MAX_FRAME_LEN,
    VLAN_TAGS_LEN,
};

/// An error from DPDK, with what we were doing when it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DpdkError {
    pub context: String,
    pub detail: String,
}

impl DpdkError {
    pub(crate) fn new(context: impl Into<String>, detail: impl Into<String>) -> Self {
        DpdkError {
            context: context.into(),
            detail: detail.into(),
        }
    }

    /// An error from a DPDK call that returned `-errno` (or set `rte_errno` and returned -1).
    pub(crate) fn from_code(context: impl Into<String>, code: i32) -> Self {
        let errnum = if code == -1 { rte_errno() } else { -code };
        DpdkError::new(context, strerror(errnum))
    }

    /// An error from a DPDK call that returned NULL and set `rte_errno`.
    pub(crate) fn from_errno(context: impl Into<String>) -> Self {
        DpdkError::new(context, strerror(rte_errno()))
    }
}

impl fmt::Display for DpdkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.context, self.detail)
    }
}

impl std::error::Error for DpdkError {}

fn rte_errno() -> i32 {
    // SAFETY: reads the calling thread's rte_errno; no preconditions.
    unsafe { dpdk_sys::qosgw_errno() }
}

fn strerror(errnum: i32) -> String {
    // SAFETY: rte_strerror returns a pointer to a static or thread-local NUL-terminated
    // string for any errnum; we copy it out at once.
    let msg = unsafe { CStr::from_ptr(dpdk_sys::rte_strerror(errnum)) };
    msg.to_string_lossy().into_owned()
}
