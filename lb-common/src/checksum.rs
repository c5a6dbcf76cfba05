//! Internet checksum arithmetic (RFC 1071 / RFC 1624) used by the packet
//! path for incremental updates; pure so the host tests it directly.

/// Folds a 32-bit one's-complement accumulator to 16 bits.
#[inline(always)]
pub const fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m') for a 16-bit field change.
/// All values are as read from the packet (same byte order on both sides,
/// which the one's-complement sum is indifferent to).
#[inline(always)]
pub const fn update16(check: u16, old: u16, new: u16) -> u16 {
    !fold((!check) as u32 + (!old) as u32 + new as u32)
}

/// Same as `update16` for a 32-bit field (an address).
#[inline(always)]
pub const fn update32(check: u16, old: u32, new: u32) -> u16 {
    let c = (!check) as u32
        + (!(old >> 16) as u16) as u32
        + (!(old as u16)) as u32
        + (new >> 16)
        + (new & 0xffff);
    !fold(c)
}

/// One's-complement sum of 16-bit words in memory order.
#[inline(always)]
pub fn sum_words(bytes: &[u8], mut acc: u32) -> u32 {
    let mut i = 0;
    while i + 1 < bytes.len() {
        acc += u16::from_ne_bytes([bytes[i], bytes[i + 1]]) as u32;
        i += 2;
    }
    if i < bytes.len() {
        acc += u16::from_ne_bytes([bytes[i], 0]) as u32;
    }
    acc
}

/// The value a Linux socket leaves in the TCP/UDP checksum field when it
/// offloads the checksum (CHECKSUM_PARTIAL): the folded, uncomplemented
/// pseudo-header sum, which the device completes over the transport header
/// and payload. Addresses as in the packet; `l4_len` in host order.
#[inline(always)]
pub const fn pseudo_partial(src: u32, dst: u32, proto: u8, l4_len: u16) -> u16 {
    let sum = (src >> 16)
        + (src & 0xffff)
        + (dst >> 16)
        + (dst & 0xffff)
        + ((proto as u16).to_be() as u32)
        + (l4_len.to_be() as u32);
    fold(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full(bytes: &[u8]) -> u16 {
        !fold(sum_words(bytes, 0))
    }

    /// Completing a partial checksum the way a device does (summing the
    /// transport header and payload with the field in place) must give the
    /// full checksum.
    #[test]
    fn partial_completes_to_the_full_checksum() {
        let src = u32::from_ne_bytes([10, 0, 0, 1]);
        let dst = u32::from_ne_bytes([10, 96, 0, 10]);
        let mut seg = [
            0x9c, 0x40, 0, 80, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xfa, 0xf0, 0, 0, 0, 0, b'h',
            b'i',
        ];
        let partial = pseudo_partial(src, dst, 6, seg.len() as u16);
        seg[16..18].copy_from_slice(&partial.to_ne_bytes());
        let completed = !fold(sum_words(&seg, 0));
        seg[16..18].copy_from_slice(&completed.to_ne_bytes());
        let pseudo = pseudo_partial(src, dst, 6, seg.len() as u16) as u32;
        assert_eq!(!fold(sum_words(&seg, pseudo)), 0, "valid full checksum");
    }

    #[test]
    fn incremental_matches_full_recompute() {
        let mut hdr: [u8; 20] = [
            0x45, 0, 0, 60, 0x1c, 0x46, 0x40, 0, 0x40, 6, 0, 0, 10, 0, 0, 1, 10, 96, 0, 10,
        ];
        let c = full(&hdr);
        hdr[10..12].copy_from_slice(&c.to_ne_bytes());
        assert_eq!(full(&hdr), 0);
        for new in [0u32, 0xffff_ffff, 0x0a00_0005, 0xc0a8_0101, 0x0000_ffff] {
            let old = u32::from_ne_bytes(hdr[16..20].try_into().unwrap());
            let check = u16::from_ne_bytes([hdr[10], hdr[11]]);
            let newb = new.to_be_bytes();
            let new_ne = u32::from_ne_bytes(newb);
            hdr[16..20].copy_from_slice(&newb);
            let upd = update32(check, old, new_ne);
            hdr[10..12].copy_from_slice(&upd.to_ne_bytes());
            assert_eq!(full(&hdr), 0, "after setting {new:#x}");
        }
        for port in [0u16, 1, 80, 0xffff, 8080] {
            let old = u16::from_ne_bytes([hdr[2], hdr[3]]);
            let check = u16::from_ne_bytes([hdr[10], hdr[11]]);
            let newb = port.to_be_bytes();
            hdr[2..4].copy_from_slice(&newb);
            let upd = update16(check, old, u16::from_ne_bytes(newb));
            hdr[10..12].copy_from_slice(&upd.to_ne_bytes());
            assert_eq!(full(&hdr), 0, "after setting {port}");
        }
    }
}
