//! Addresses as the maps hold them: the packet's bytes read as native-endian
//! u32 words (one for IPv4, four for IPv6, as a socket's `user_ip6`), so the
//! data plane compares and copies them unswapped.
use core::net::{Ipv4Addr, Ipv6Addr};

#[inline(always)]
pub fn to_map(addr: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(addr.octets())
}

#[inline(always)]
pub fn from_map(addr: u32) -> Ipv4Addr {
    Ipv4Addr::from(addr.to_ne_bytes())
}

/// Whether a map word is an address of 127.0.0.0/8.
#[inline(always)]
pub const fn is_loopback(addr: u32) -> bool {
    addr.to_ne_bytes()[0] == 127
}

/// 127.0.0.1, the one address of 127.0.0.0/8 whose NodePorts the maps
/// hold: the socket hooks look every loopback address up under it.
pub const LOCALHOST: u32 = u32::from_ne_bytes([127, 0, 0, 1]);

#[inline(always)]
pub fn to_map_v6(addr: Ipv6Addr) -> [u32; 4] {
    let o = addr.octets();
    core::array::from_fn(|i| {
        u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]])
    })
}

#[inline(always)]
pub fn from_map_v6(addr: [u32; 4]) -> Ipv6Addr {
    let mut o = [0u8; 16];
    for (chunk, word) in o.chunks_exact_mut(4).zip(addr) {
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    Ipv6Addr::from(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_the_first_octet_127() {
        assert!(is_loopback(to_map(Ipv4Addr::new(127, 3, 2, 1))));
        assert!(is_loopback(LOCALHOST));
        assert_eq!(from_map(LOCALHOST), Ipv4Addr::LOCALHOST);
        assert!(!is_loopback(to_map(Ipv4Addr::new(1, 2, 3, 127))));
    }

    #[test]
    fn round_trips_in_packet_byte_order() {
        let a = Ipv4Addr::new(10, 96, 0, 1);
        assert_eq!(to_map(a).to_ne_bytes(), [10, 96, 0, 1]);
        assert_eq!(from_map(to_map(a)), a);
        let a6: Ipv6Addr = "fd00:96::1".parse().unwrap();
        assert_eq!(to_map_v6(a6)[0].to_ne_bytes(), [0xfd, 0, 0, 0x96]);
        assert_eq!(from_map_v6(to_map_v6(a6)), a6);
    }
}
