//! The qosgw control plane. Builds and tests without DPDK.
