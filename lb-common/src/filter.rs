//! A bitmap over addresses that tells the packet path, with two reads of a
//! global array and no map lookup, that a packet concerns no service:
//! its destination is no frontend and its source no backend. A set bit may
//! be a false positive (the full lookups then decide); a clear bit never
//! lies, as long as the agent sets bits before it publishes what they cover.

/// log2 of the bitmap's size in bits.
const FILTER_BITS: u32 = 22;

/// 2^22 bits (512 KiB): under 5% false positives with 100,000 addresses.
pub const FILTER_WORDS: u32 = 1 << (FILTER_BITS - 6);

/// Which set an address is tested against.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddrSet {
    Frontend = 0x2c1b_3c6d,
    Backend = 0x297a_2d39,
}

/// Word index into the filter and the bit within it for `addr`
/// (network order, as in the packet).
///
/// Every packet pays this, so it is a multiplicative (Fibonacci) hash: one
/// byte swap and one multiply, where a full-avalanche mixer costs five more
/// dependent steps. The swap puts the octets that vary most between
/// neighbouring addresses in the low bits, which the multiply spreads into
/// the high bits kept as the position.
#[inline(always)]
pub const fn position(addr: u32, set: AddrSet) -> (u32, u64) {
    let x = (u32::from_be(addr) ^ set as u32) as u64;
    let h = (x.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - FILTER_BITS)) as u32;
    (h >> 6, 1u64 << (h & 63))
}

/// `position` of an IPv6 address (four words, as in the packet), folded to
/// one word: the program and the agent must fold alike, and a collision is
/// only a false positive.
#[inline(always)]
pub const fn position_v6(addr: [u32; 4], set: AddrSet) -> (u32, u64) {
    position(addr[0] ^ addr[1] ^ addr[2] ^ addr[3], set)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_do_not_share_positions_and_spread() {
        let a = 0x0a60_000a;
        assert_ne!(
            position(a, AddrSet::Frontend),
            position(a, AddrSet::Backend)
        );
        let mut words = std::collections::HashSet::new();
        for i in 0..1000u32 {
            words.insert(position(0x0a00_0000 + i, AddrSet::Frontend).0);
        }
        assert!(words.len() > 980, "{}", words.len());
    }

    /// The false-positive rate the size promises, for a cluster's worth of
    /// pod and service addresses packed into a few subnets.
    #[test]
    fn false_positives_stay_low_with_dense_subnets() {
        let mut bits = std::collections::HashSet::new();
        let pods = (0..60_000u32).map(|i| 0x0af4_0000 + i); // 10.244.0.0/16
        let services = (0..40_000u32).map(|i| 0x0a60_0000 + i * 3); // 10.96.0.0/12
        for a in pods.chain(services) {
            bits.insert(position(a.to_be(), AddrSet::Frontend));
        }
        let probes = 100_000u32;
        let hits = (0..probes)
            .map(|i| 0xc0a8_0000u32.wrapping_add(i.wrapping_mul(7919)))
            .filter(|a| bits.contains(&position(a.to_be(), AddrSet::Frontend)))
            .count();
        let rate = hits as f64 / probes as f64;
        assert!(rate < 0.03, "false positive rate {rate}");
    }
}
