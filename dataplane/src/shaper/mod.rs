//! Earliest-departure-time shapers and the per-worker timing wheel.

mod edt;
mod rate;
mod shared;
mod wheel;

pub use edt::{Decision, Shaper, ShaperConfig, ShaperState};
pub use rate::{Rate, RateError};
pub use shared::{SharedClock, SharedShaper, SharedShaperHandle};
pub use wheel::TimingWheel;
