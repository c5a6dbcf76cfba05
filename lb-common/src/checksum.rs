//! Internet checksum arithmetic (RFC 1071 / RFC 1624) used by the packet
//! path for incremental updates; pure so the host tests it directly.

/// Folds a 32-bit one's-complement accumulator to 16 bits.
#[inline(always)]
pub const fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// RFC 1624's `~m + m'` for a 16-bit field changing from `old` to `new`,
/// unfolded so several changes add up before one fold.
#[inline(always)]
pub const fn diff16(old: u16, new: u16) -> u32 {
    (!old) as u32 + new as u32
}

/// Same as `diff16` for a 32-bit field (an address).
#[inline(always)]
pub const fn diff32(old: u32, new: u32) -> u32 {
    diff16((old >> 16) as u16, (new >> 16) as u16) + diff16(old as u16, new as u16)
}

/// RFC 1624 eqn. 3, HC' = ~(~HC + D), for a complete checksum and a folded
/// difference `diff` of every field that changed.
#[inline(always)]
pub const fn apply(check: u16, diff: u16) -> u16 {
    !fold((!check) as u32 + diff as u32)
}

/// Adds a folded difference to an uncomplemented sum (a partial checksum).
#[inline(always)]
pub const fn add(sum: u16, diff: u16) -> u16 {
    fold(sum as u32 + diff as u32)
}

/// RFC 1624 eqn. 3 for a 16-bit field change. All values are as read from
/// the packet (same byte order on both sides, which the one's-complement
/// sum is indifferent to).
#[inline(always)]
pub const fn update16(check: u16, old: u16, new: u16) -> u16 {
    apply(check, fold(diff16(old, new)))
}

/// Same as `update16` for a 32-bit field (an address).
#[inline(always)]
pub const fn update32(check: u16, old: u32, new: u32) -> u16 {
    apply(check, fold(diff32(old, new)))
}

/// An address as the maps hold it (`addr`): one word for IPv4, four for
/// IPv6, each as in the packet. Both families' pseudo-headers sum the
/// addresses as 16-bit words, so one set of sums serves both.
pub trait Addr: Copy + PartialEq + Default {
    /// The unfolded one's-complement sum of the address's 16-bit words.
    fn sum(self) -> u32;
    /// RFC 1624's difference for the address changing from `old` to `new`.
    fn diff(old: Self, new: Self) -> u32;
}

impl Addr for u32 {
    #[inline(always)]
    fn sum(self) -> u32 {
        (self >> 16) + (self & 0xffff)
    }
    #[inline(always)]
    fn diff(old: u32, new: u32) -> u32 {
        diff32(old, new)
    }
}

// Folded per word so four words cannot overflow the accumulator, and
// spelled out: the BPF backend keeps an iterator's state on the stack,
// which the IPv6 path cannot spare.
impl Addr for [u32; 4] {
    #[inline(always)]
    fn sum(self) -> u32 {
        let [a, b, c, d] = self;
        fold(a.sum()) as u32 + fold(b.sum()) as u32 + fold(c.sum()) as u32 + fold(d.sum()) as u32
    }
    #[inline(always)]
    fn diff(old: Self, new: Self) -> u32 {
        fold(diff32(old[0], new[0])) as u32
            + fold(diff32(old[1], new[1])) as u32
            + fold(diff32(old[2], new[2])) as u32
            + fold(diff32(old[3], new[3])) as u32
    }
}

/// A packet's addresses and ports, in network order as in the packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tuple<A = u32> {
    pub src: A,
    pub dst: A,
    pub sport: u16,
    pub dport: u16,
}

impl<A: Copy> Tuple<A> {
    /// The tuple of a packet going the other way.
    pub const fn reversed(self) -> Tuple<A> {
        Tuple {
            src: self.dst,
            dst: self.src,
            sport: self.dport,
            dport: self.sport,
        }
    }
}

/// What rewriting a flow's tuple does to its checksums, computed once when
/// the flow's entry is created so that every later packet pays one addition
/// per checksum instead of recomputing the differences.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RewriteSums {
    /// Difference of the addresses alone: for the IPv4 header checksum and
    /// for a partial TCP/UDP checksum (which covers only the pseudo-header).
    pub addrs: u16,
    /// Difference of addresses and ports: for a complete TCP/UDP checksum.
    pub l4: u16,
    /// Pseudo-header sum of the original addresses and protocol, without
    /// the length: `add(pseudo, len)` is what a partial checksum holds.
    pub pseudo: u16,
}

impl RewriteSums {
    /// The sums of rewriting `from` to `to`.
    #[inline(always)]
    pub fn new<A: Addr>(from: &Tuple<A>, to: &Tuple<A>, proto: u8) -> Self {
        let addrs = fold(A::diff(from.src, to.src) + A::diff(from.dst, to.dst)) as u32;
        let ports = diff16(from.sport, to.sport) + diff16(from.dport, to.dport);
        RewriteSums {
            addrs: addrs as u16,
            l4: fold(addrs + ports),
            pseudo: pseudo_base(from.src, from.dst, proto),
        }
    }

    /// The sums of the way back: rewriting `to.reversed()` to
    /// `from.reversed()`, without building either.
    #[inline(always)]
    pub fn back<A: Addr>(from: &Tuple<A>, to: &Tuple<A>, proto: u8) -> Self {
        let addrs = fold(A::diff(to.dst, from.dst) + A::diff(to.src, from.src)) as u32;
        let ports = diff16(to.dport, from.dport) + diff16(to.sport, from.sport);
        RewriteSums {
            addrs: addrs as u16,
            l4: fold(addrs + ports),
            pseudo: pseudo_base(to.dst, to.src, proto),
        }
    }
}

/// Pseudo-header sum of addresses and protocol (network order); IPv6's
/// 32-bit length and next header sum to the same words as IPv4's.
#[inline(always)]
pub fn pseudo_base<A: Addr>(src: A, dst: A, proto: u8) -> u16 {
    fold(fold(src.sum()) as u32 + fold(dst.sum()) as u32 + (proto as u16).to_be() as u32)
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
pub fn pseudo_partial<A: Addr>(src: A, dst: A, proto: u8, l4_len: u16) -> u16 {
    add(pseudo_base(src, dst, proto), l4_len.to_be())
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

    /// A TCP segment from `t` with a valid checksum, and its pseudo-header sum.
    fn segment(t: Tuple, payload: &[u8]) -> Vec<u8> {
        let mut seg = vec![0u8; 20];
        seg[0..2].copy_from_slice(&t.sport.to_ne_bytes());
        seg[2..4].copy_from_slice(&t.dport.to_ne_bytes());
        seg[4..8].copy_from_slice(&[1, 2, 3, 4]);
        seg[12] = 0x50;
        seg[13] = 0x10;
        seg.extend_from_slice(payload);
        let pseudo = pseudo_partial(t.src, t.dst, 6, seg.len() as u16) as u32;
        let c = !fold(sum_words(&seg, pseudo));
        seg[16..18].copy_from_slice(&c.to_ne_bytes());
        seg
    }

    /// The sums precomputed for a flow give, with one addition each, the
    /// checksums a full recomputation gives after the rewrite, for complete
    /// and for partial checksums, with and without a source rewrite.
    #[test]
    fn rewrite_sums_match_full_recompute() {
        let ip = |a: [u8; 4]| u32::from_ne_bytes(a);
        let port = |p: u16| p.to_be();
        let client = Tuple {
            src: ip([192, 168, 1, 100]),
            dst: ip([10, 96, 0, 10]),
            sport: port(40000),
            dport: port(80),
        };
        let dnat = Tuple {
            dst: ip([10, 244, 1, 7]),
            dport: port(8080),
            ..client
        };
        let both = Tuple {
            src: ip([172, 18, 0, 2]),
            sport: port(61234),
            ..dnat
        };
        for (from, to) in [
            (client, dnat),
            (client, both),
            (both.reversed(), client.reversed()),
        ] {
            let sums = RewriteSums::new(&from, &to, 6);
            assert_eq!(
                RewriteSums::back(&to.reversed(), &from.reversed(), 6),
                sums,
                "the way back of the way back"
            );
            for payload in [&b""[..], b"hello", b"\xff\xff\xff"] {
                let seg = segment(from, payload);
                let check = u16::from_ne_bytes([seg[16], seg[17]]);
                let want = segment(to, payload);
                assert_eq!(
                    apply(check, sums.l4).to_ne_bytes(),
                    [want[16], want[17]],
                    "complete checksum {from:?} -> {to:?}"
                );
                let len = (seg.len() as u16).to_be();
                let partial = pseudo_partial(from.src, from.dst, 6, seg.len() as u16);
                assert_eq!(add(sums.pseudo, len), partial, "partial recognised");
                assert_eq!(
                    add(partial, sums.addrs),
                    pseudo_partial(to.src, to.dst, 6, seg.len() as u16),
                    "partial checksum {from:?} -> {to:?}"
                );
            }
            let mut hdr: [u8; 20] = [
                0x45, 0, 0, 60, 0x1c, 0x46, 0x40, 0, 0x40, 6, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            ];
            hdr[12..16].copy_from_slice(&from.src.to_ne_bytes());
            hdr[16..20].copy_from_slice(&from.dst.to_ne_bytes());
            let c = full(&hdr);
            hdr[12..16].copy_from_slice(&to.src.to_ne_bytes());
            hdr[16..20].copy_from_slice(&to.dst.to_ne_bytes());
            hdr[10..12].copy_from_slice(&apply(c, sums.addrs).to_ne_bytes());
            assert_eq!(full(&hdr), 0, "IPv4 header {from:?} -> {to:?}");
        }
    }
}
