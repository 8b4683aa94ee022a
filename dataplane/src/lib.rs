//! The qosgw dataplane.
//!
//! The packet logic (`wire`, `shaper`) works on plain byte slices and structs and
//! is tested without DPDK; only `dpdk` (the safe wrapper over EAL, mempools,
//! ports and mbufs) and the worker loop built on it need DPDK.

pub mod counters;
pub mod distribute;
pub mod flow_cache;
pub mod fragments;
pub mod handover;
pub mod huge_pages;
pub mod pcap;
pub mod pipeline;
pub mod policy_set;
mod prefetch;
pub mod shaper;
pub mod synth;
pub mod wire;

#[cfg(feature = "dpdk")]
pub mod dpdk;
#[cfg(feature = "dpdk")]
pub mod gateway;
#[cfg(feature = "dpdk")]
pub mod steering;
#[cfg(feature = "dpdk")]
pub mod worker;
