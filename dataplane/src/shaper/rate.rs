//! A throttle rate expressed in TSC cycles per byte.
//!
//! A frame of `len` bytes takes `len × 8 × tsc_hz / bps` cycles on the wire. Computing that
//! exactly needs a 128-bit division per packet; instead [`Rate`] precomputes cycles per byte
//! in 64.64 fixed point once, rounded up, and each shaper carries the fraction of a cycle
//! that a packet's time leaves over (in 2⁻³² cycle units) into the next packet's.
//!
//! After `n` packets of `B` bytes in all, a shaper has charged
//! `exact − carry − lost + excess` cycles, where `exact = B × 8 × tsc_hz / bps`, `carry`
//! (< 1) is the fraction still held, `lost` (< n × 2⁻³²) the carry's truncations and
//! `excess` (< B × 2⁻⁶⁴, 5·10⁻⁹ cycle for 10⁷ jumbo frames) the constant's rounding.
//! So the charge is within one cycle of `exact` for the first four billion packets, with
//! one more cycle per four billion packets after that: nothing drifts at any rate, and a
//! single frame costs exactly `⌊len × 8 × tsc_hz / bps⌋` cycles.

use std::fmt;

/// A throttle rate bound to the TSC frequency that schedules are written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    bps: u64,
    tsc_hz: u64,
    /// Cycles per byte, `8 × tsc_hz / bps`, in 64.64 fixed point, rounded up (so that a
    /// frame whose exact time is a whole number of cycles is charged exactly that).
    /// At most 8 × 5 GHz / 8 kb/s = 5·10⁶ cycles per byte, i.e. below 2⁸⁷.
    cycles_per_byte: u128,
}

/// Why a [`Rate`] could not be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RateError {
    /// The rate is outside [`Rate::MIN_BPS`] ..= [`Rate::MAX_BPS`].
    BpsOutOfRange(u64),
    /// The TSC frequency is outside [`Rate::MIN_TSC_HZ`] ..= [`Rate::MAX_TSC_HZ`].
    TscHzOutOfRange(u64),
}

impl fmt::Display for RateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            RateError::BpsOutOfRange(bps) => write!(
                f,
                "throttle rate {bps} bit/s is outside {} bit/s ..= {} bit/s",
                Rate::MIN_BPS,
                Rate::MAX_BPS
            ),
            RateError::TscHzOutOfRange(hz) => write!(
                f,
                "TSC frequency {hz} Hz is outside {} Hz ..= {} Hz",
                Rate::MIN_TSC_HZ,
                Rate::MAX_TSC_HZ
            ),
        }
    }
}

impl std::error::Error for RateError {}

impl Rate {
    /// The slowest throttle SPEC §2 accepts.
    pub const MIN_BPS: u64 = 8_000;
    /// The fastest throttle SPEC §2 promises to hold.
    pub const MAX_BPS: u64 = 400_000_000_000;
    /// Bounds on the TSC frequency. The arithmetic is exact for any value up to
    /// `MAX_TSC_HZ`; the lower bound only catches a frequency passed in the wrong unit.
    pub const MIN_TSC_HZ: u64 = 1_000_000;
    pub const MAX_TSC_HZ: u64 = 10_000_000_000;

    /// A rate of `bps` bits per second for a TSC running at `tsc_hz`.
    pub fn new(bps: u64, tsc_hz: u64) -> Result<Rate, RateError> {
        if !(Self::MIN_BPS..=Self::MAX_BPS).contains(&bps) {
            return Err(RateError::BpsOutOfRange(bps));
        }
        if !(Self::MIN_TSC_HZ..=Self::MAX_TSC_HZ).contains(&tsc_hz) {
            return Err(RateError::TscHzOutOfRange(tsc_hz));
        }
        // 8 × 10¹⁰ × 2⁶⁴ < 2¹⁰³: no overflow.
        let cycles_per_byte = ((8 * tsc_hz as u128) << 64).div_ceil(bps as u128);
        Ok(Rate {
            bps,
            tsc_hz,
            cycles_per_byte,
        })
    }

    /// The rate in bits per second.
    pub fn bps(&self) -> u64 {
        self.bps
    }

    /// The TSC frequency this rate converts to.
    pub fn tsc_hz(&self) -> u64 {
        self.tsc_hz
    }

    /// Transmission time of a `len`-byte frame in cycles, carrying the fraction of a cycle
    /// left over in `carry` (units of 2⁻³² cycle) from one call to the next. Per packet:
    /// one 64×128-bit multiply, an add and shifts; no division.
    #[inline]
    pub fn tx_cycles(&self, len: u32, carry: &mut u32) -> u64 {
        // len < 2³², cycles_per_byte < 2⁸⁷: the product is below 2¹¹⁹.
        let t = len as u128 * self.cycles_per_byte + ((*carry as u128) << 32);
        *carry = (t >> 32) as u32;
        (t >> 64) as u64
    }

    /// Exact `bytes × 8 × tsc_hz / bps`, rounded down (one 128-bit division): for
    /// configuration values such as the burst, and as the reference in tests.
    pub fn cycles_for_bytes(&self, bytes: u64) -> u64 {
        let c = bytes as u128 * 8 * self.tsc_hz as u128 / self.bps as u128;
        u64::try_from(c).unwrap_or(u64::MAX)
    }

    /// Bytes the rate sends in `cycles`, rounded down: `cycles × bps / (8 × tsc_hz)`.
    pub fn bytes_in_cycles(&self, cycles: u64) -> u64 {
        let b = cycles as u128 * self.bps as u128 / (8 * self.tsc_hz as u128);
        u64::try_from(b).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GHZ: u64 = 1_000_000_000;

    #[test]
    fn refuses_out_of_range() {
        assert_eq!(Rate::new(7_999, GHZ), Err(RateError::BpsOutOfRange(7_999)));
        assert_eq!(
            Rate::new(400_000_000_001, GHZ),
            Err(RateError::BpsOutOfRange(400_000_000_001))
        );
        assert_eq!(Rate::new(8_000, 3), Err(RateError::TscHzOutOfRange(3)));
        assert!(Rate::new(8_000, 5 * GHZ).is_ok());
        assert!(Rate::new(Rate::MAX_BPS, GHZ).is_ok());
    }

    #[test]
    fn single_frames_match_exact_division() {
        for &bps in &[
            8_000,
            1_000_000,
            1_000_000_000,
            10_000_000_000,
            Rate::MAX_BPS,
        ] {
            for &hz in &[GHZ, 2_400_000_000, 3_000_000_001, 5 * GHZ] {
                let rate = Rate::new(bps, hz).unwrap();
                for &len in &[1u32, 60, 64, 1514, 9216, 65_535] {
                    let mut carry = 0;
                    let got = rate.tx_cycles(len, &mut carry);
                    assert_eq!(got, rate.cycles_for_bytes(len as u64), "{bps} {hz} {len}");
                }
            }
        }
    }

    /// Over 10⁷ packets the charged cycles stay within one cycle of the exact total
    /// (the bound in the module comment), at the extremes of rate, TSC and frame size.
    #[test]
    fn no_drift_over_ten_million_packets_at_the_extremes() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for &(bps, hz) in &[
            (Rate::MIN_BPS, GHZ),
            (Rate::MIN_BPS, 5 * GHZ),
            (Rate::MAX_BPS, GHZ),
            (Rate::MAX_BPS, 2_899_999_999),
            (10_000_000_000, 3 * GHZ),
        ] {
            let rate = Rate::new(bps, hz).unwrap();
            for mode in 0..3 {
                let mut carry = 0;
                let mut total: u64 = 0;
                let mut bytes: u64 = 0;
                for _ in 0..10_000_000u32 {
                    let len = match mode {
                        0 => 1,
                        1 => 9216,
                        _ => {
                            seed ^= seed << 13;
                            seed ^= seed >> 7;
                            seed ^= seed << 17;
                            60 + (seed % 9157) as u32
                        }
                    };
                    total += rate.tx_cycles(len, &mut carry);
                    bytes += len as u64;
                }
                let exact = rate.cycles_for_bytes(bytes); // rounded down
                assert!(
                    total.abs_diff(exact) <= 1,
                    "{bps} b/s at {hz} Hz, mode {mode}: charged {total}, exact {exact}"
                );
            }
        }
    }

    #[test]
    fn bytes_in_cycles_inverts_cycles_for_bytes() {
        let rate = Rate::new(20_000_000, 3 * GHZ).unwrap();
        // 20 Mb/s = 2.5 MB/s; one second of cycles carries 2.5 MB.
        assert_eq!(rate.bytes_in_cycles(3 * GHZ), 2_500_000);
        assert_eq!(rate.cycles_for_bytes(2_500_000), 3 * GHZ);
    }
}
