//! The flow hash that picks a Maglev slot. Shared so `xdplb explain` computes
//! exactly what the packet path computes.

#[inline(always)]
pub(crate) const fn fmix(mut h: u32) -> u32 {
    // murmur3's finaliser: full avalanche in five cheap ALU ops, no tables,
    // which matters more on the packet path than cryptographic strength.
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

/// Hash of a flow's 5-tuple; inputs in network byte order as in the packet.
#[inline(always)]
pub const fn flow_hash_v4(src: u32, dst: u32, sport: u16, dport: u16, proto: u8) -> u32 {
    let h = fmix(src ^ 0x9e37_79b9);
    let h = fmix(h ^ dst);
    fmix(h ^ (((sport as u32) << 16) | dport as u32) ^ ((proto as u32) << 8))
}

/// `flow_hash_v4` for IPv6: each address folded to a word first.
#[inline(always)]
pub const fn flow_hash_v6(src: [u32; 4], dst: [u32; 4], sport: u16, dport: u16, proto: u8) -> u32 {
    flow_hash_v4(fold_v6(src), fold_v6(dst), sport, dport, proto)
}

/// Rotated so that words differing by a swap still hash apart.
#[inline(always)]
const fn fold_v6(a: [u32; 4]) -> u32 {
    a[0] ^ a[1].rotate_left(8) ^ a[2].rotate_left(16) ^ a[3].rotate_left(24)
}

#[cfg(test)]
mod tests {
    use super::{flow_hash_v4, flow_hash_v6};

    #[test]
    fn spreads_source_ports_evenly() {
        let mut buckets = [0u32; 7];
        for p in 0..7000u16 {
            let h = flow_hash_v4(0x0a00_0001, 0x0a60_000a, 30000 + p, 80, 6);
            buckets[(h % 7) as usize] += 1;
        }
        for b in buckets {
            assert!((900..=1100).contains(&b), "{buckets:?}");
        }
    }

    #[test]
    fn ipv6_spreads_interface_ids_evenly() {
        let mut buckets = [0u32; 7];
        for p in 0..7000u32 {
            let src = [0x00fd_u32, 0, 0, p.to_be()];
            let h = flow_hash_v6(src, [0x00fd, 0, 0, 10], 40000, 80, 6);
            buckets[(h % 7) as usize] += 1;
        }
        for b in buckets {
            assert!((900..=1100).contains(&b), "{buckets:?}");
        }
    }

    #[test]
    fn direction_and_protocol_matter() {
        let a = flow_hash_v4(1, 2, 3, 4, 6);
        assert_ne!(a, flow_hash_v4(2, 1, 4, 3, 6));
        assert_ne!(a, flow_hash_v4(1, 2, 3, 4, 17));
    }
}
