//! Earliest-departure-time shapers and the per-worker timing wheel.
