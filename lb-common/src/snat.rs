//! The source ports source NAT may give a flow whose client's own port is
//! taken: every port from 1024 up, less the node's ephemeral range.
//!
//! A reply tuple (backend, node address and port) must never be one that a
//! connection of the node's own sockets to that backend uses, since the
//! path would take that connection's packets for the flow's replies. The
//! node's sockets connect from its ephemeral range (`ip_local_port_range`),
//! so source NAT takes every other port; netfilter, which sees the node's
//! connections in its own table, takes any. Linux's default range
//! (32768-60999) leaves 36,280 ports.

/// Ports `min..=max`, less the `skip_len` ports from `skip_from`, host
/// order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnatPorts {
    pub min: u16,
    pub max: u16,
    pub skip_from: u16,
    pub skip_len: u16,
}

/// Below this, source NAT would run dry at a few thousand new flows a second
/// to one backend; such a node's ephemeral range is overlapped instead.
const FEWEST: u32 = 4_096;
/// Ports below this are privileged; no client or NAT port comes from there.
const FIRST: u16 = 1_024;

impl SnatPorts {
    /// Around Linux's default ephemeral range.
    pub const DEFAULT: SnatPorts = SnatPorts::around(32_768, 60_999);
    /// For a node whose ephemeral range leaves too few ports: those below
    /// the NodePort range, where no Service's NodePort is either.
    pub const BELOW_NODEPORTS: SnatPorts = SnatPorts {
        min: FIRST,
        max: 29_999,
        skip_from: u16::MAX,
        skip_len: 0,
    };

    /// The ports around a node's ephemeral range `first..=last`, or `None`
    /// when that leaves fewer than `FEWEST`.
    pub const fn outside(first: u16, last: u16) -> Option<SnatPorts> {
        let ports = SnatPorts::around(first, last);
        if ports.count() < FEWEST {
            None
        } else {
            Some(ports)
        }
    }

    const fn around(first: u16, last: u16) -> SnatPorts {
        let from = if first < FIRST { FIRST } else { first };
        let len = if last >= from { last - from + 1 } else { 0 };
        SnatPorts {
            min: FIRST,
            max: u16::MAX,
            skip_from: from,
            skip_len: len,
        }
    }

    /// How many ports there are.
    #[inline(always)]
    pub const fn count(&self) -> u32 {
        (self.max as u32 + 1)
            .saturating_sub(self.min as u32)
            .saturating_sub(self.skip_len as u32)
    }

    /// The port `n` ports into the range (`n < count()`), host order.
    #[inline(always)]
    pub const fn nth(&self, n: u32) -> u16 {
        let port = self.min as u32 + n;
        if port >= self.skip_from as u32 {
            (port + self.skip_len as u32) as u16
        } else {
            port as u16
        }
    }

    /// Whether `port` (host order) is one of the range.
    pub const fn contains(&self, port: u16) -> bool {
        let skipped = port >= self.skip_from && (port - self.skip_from) < self.skip_len;
        port >= self.min && port <= self.max && !skipped
    }
}

const _: () = assert!(core::mem::size_of::<SnatPorts>() == 8);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_range_is_every_unprivileged_port_outside_linuxs_ephemeral_ones() {
        let p = SnatPorts::DEFAULT;
        let all: Vec<u16> = (0..p.count()).map(|n| p.nth(n)).collect();
        let expected: Vec<u16> = (1024..=32_767).chain(61_000..=65_535).collect();
        assert_eq!(all, expected);
        assert_eq!(p.count(), 36_280);
        assert!(all.iter().all(|&port| p.contains(port)));
        for port in [0, 1023, 32_768, 45_000, 60_999] {
            assert!(!p.contains(port), "{port}");
        }
    }

    #[test]
    fn an_ephemeral_range_reaching_the_top_leaves_the_ports_below_it() {
        let p = SnatPorts::outside(49_152, 65_535).unwrap();
        let all: Vec<u16> = (0..p.count()).map(|n| p.nth(n)).collect();
        assert_eq!(all, (1024..49_152).collect::<Vec<_>>());
    }

    #[test]
    fn an_ephemeral_range_starting_low_is_clipped_at_the_privileged_ports() {
        let p = SnatPorts::outside(500, 59_999).unwrap();
        let all: Vec<u16> = (0..p.count()).map(|n| p.nth(n)).collect();
        assert_eq!(all, (60_000..=65_535).collect::<Vec<_>>());
    }

    #[test]
    fn an_ephemeral_range_of_almost_everything_leaves_too_few() {
        assert_eq!(SnatPorts::outside(1024, 63_000), None);
        assert_eq!(SnatPorts::outside(2_000, 65_535), None);
        let below = SnatPorts::BELOW_NODEPORTS;
        assert_eq!((below.nth(0), below.nth(below.count() - 1)), (1024, 29_999));
        assert!(!below.contains(30_000) && below.contains(29_999));
    }
}
