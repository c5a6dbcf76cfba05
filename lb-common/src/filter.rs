//! A bitmap over addresses that tells the packet path, with two inlined
//! array reads and no hash-map lookup, that a packet concerns no service:
//! its destination is no frontend and its source no backend. A set bit may
//! be a false positive (the full lookups then decide); a clear bit never
//! lies, as long as the agent sets bits before it publishes what they cover.

use crate::flow::fmix;

/// 2^22 bits (512 KiB): under 5% false positives with 100,000 addresses.
pub const FILTER_WORDS: u32 = 1 << 16;

/// Which set an address is tested against.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddrSet {
    Frontend = 0x2c1b_3c6d,
    Backend = 0x297a_2d39,
}

/// Word index into `ADDR_FILTER` and the bit within it for `addr`
/// (network order, as in the packet).
#[inline(always)]
pub const fn position(addr: u32, set: AddrSet) -> (u32, u64) {
    let h = fmix(addr ^ set as u32);
    ((h >> 6) & (FILTER_WORDS - 1), 1u64 << (h & 63))
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
}
