//! IPv4 addresses as the maps hold them: the packet's four bytes read as a
//! native-endian u32, so the packet path compares and copies them unswapped.
use core::net::Ipv4Addr;

#[inline(always)]
pub fn to_map(addr: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(addr.octets())
}

#[inline(always)]
pub fn from_map(addr: u32) -> Ipv4Addr {
    Ipv4Addr::from(addr.to_ne_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_in_packet_byte_order() {
        let a = Ipv4Addr::new(10, 96, 0, 1);
        assert_eq!(to_map(a).to_ne_bytes(), [10, 96, 0, 1]);
        assert_eq!(from_map(to_map(a)), a);
    }
}
