//! The qosgw dataplane.
//!
//! The packet logic (`wire`, `shaper`) works on plain byte slices and structs and
//! is tested without DPDK; only `dpdk` (the safe wrapper over EAL, mempools,
//! ports and mbufs) and the worker loop built on it need DPDK.

pub mod shaper;
pub mod wire;
