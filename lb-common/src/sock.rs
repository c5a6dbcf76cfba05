//! Layouts and the hash of socket-level translation: the cgroup `connect4`
//! and `sendmsg4` programs (`connect6` and `sendmsg6` for IPv6 ClusterIPs)
//! point sockets of the node's own processes (whose packets XDP never sees)
//! at a backend before the kernel routes anything; `recvmsg4`/`recvmsg6`
//! give UDP replies back the frontend as their source and
//! `getpeername4`/`getpeername6` give it back as a connected socket's peer.

use crate::flow::{flow_hash_v4, fmix};

/// Sockets talking to a frontend at once, node-wide; an evicted entry only
/// costs the oldest socket the frontend as its replies' source and peer.
pub const MAX_SOCK_REVNAT: u32 = 1 << 16;

/// Network namespaces with a ClientIP-affinity entry per frontend,
/// node-wide; an evicted entry only costs that namespace its stickiness.
pub const MAX_SOCK_AFFINITY: u32 = 1 << 16;

/// Key of `SOCK_AFFINITY_V4`: the sockets of one network namespace towards
/// one frontend. A connect has no source address yet (an unbound socket's
/// is 0), so the namespace stands in for the client: one pod, or the node
/// itself, whose processes share its source address under kube-proxy too.
/// Cilium's socket balancer keys its affinity the same way.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockAffinityKeyV4 {
    pub frontend: crate::FrontendKeyV4,
    /// `bpf_get_netns_cookie` of the socket's namespace.
    pub netns_cookie: u64,
}

/// Key of `SOCK_REVNAT_V4`: a backend as one socket was sent to it.
/// Addresses and ports in network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockRevNatKeyV4 {
    /// `bpf_get_socket_cookie`: never reused while the kernel runs, so an
    /// entry can never be mistaken for a later socket's.
    pub cookie: u64,
    pub backend_addr: u32,
    pub backend_port: u16,
    pub _pad: u16,
}

/// Value of `SOCK_REVNAT_V4`: the frontend the socket addressed. A socket
/// sending to two frontends that share a backend gets the later one.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockRevNatValueV4 {
    pub frontend_addr: u32,
    pub frontend_port: u16,
    pub _pad: u16,
}

/// Key of `SOCK_AFFINITY_V6`: as `SockAffinityKeyV4`, for an IPv6 frontend.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockAffinityKeyV6 {
    pub frontend: crate::FrontendKeyV6,
    pub _pad: u32,
    pub netns_cookie: u64,
}

/// Key of `SOCK_REVNAT_V6`: as `SockRevNatKeyV4`, for an IPv6 backend.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockRevNatKeyV6 {
    pub cookie: u64,
    pub backend_addr: [u32; 4],
    pub backend_port: u16,
    pub _pad: [u16; 3],
}

/// Value of `SOCK_REVNAT_V6`: the IPv6 frontend the socket addressed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockRevNatValueV6 {
    pub frontend_addr: [u32; 4],
    pub frontend_port: u16,
    pub _pad: u16,
}

/// Maglev hash of a socket towards a frontend. A connect has no source port
/// yet, so the socket cookie stands in for the client's half of the tuple
/// rather than a random number: one socket keeps one backend per frontend,
/// as one 5-tuple does through XDP, so the datagrams of an unconnected UDP
/// socket reach the same server and `SOCK_REVNAT_V4` holds one entry for it.
/// Cookies are sequential; the murmur finaliser spreads them.
#[inline(always)]
pub const fn socket_hash_v4(cookie: u64, dst: u32, dport: u16, proto: u8) -> u32 {
    fmix(flow_hash_v4(cookie as u32, dst, 0, dport, proto) ^ (cookie >> 32) as u32)
}

/// `socket_hash_v4` towards an IPv6 frontend, its address folded to one
/// word: a socket's backend only has to stay put and spread, and one
/// ClusterIP's four words differ from another's in few bits either way.
#[inline(always)]
pub const fn socket_hash_v6(cookie: u64, dst: [u32; 4], dport: u16, proto: u8) -> u32 {
    socket_hash_v4(cookie, dst[0] ^ dst[1] ^ dst[2] ^ dst[3], dport, proto)
}

const _: () = {
    assert!(core::mem::size_of::<SockRevNatKeyV6>() == 32);
    assert!(core::mem::size_of::<SockAffinityKeyV6>() == 32);
    assert!(core::mem::size_of::<SockRevNatValueV6>() == 20);
    assert!(core::mem::size_of::<SockRevNatKeyV4>() == 16);
    assert!(core::mem::size_of::<SockAffinityKeyV4>() == 16);
    assert!(core::mem::size_of::<SockRevNatValueV4>() == 8);
};

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: repr(C), Copy, explicit padding, no invalid bit patterns.
    unsafe impl aya::Pod for SockRevNatKeyV4 {}
    unsafe impl aya::Pod for SockAffinityKeyV4 {}
    unsafe impl aya::Pod for SockRevNatValueV4 {}
    unsafe impl aya::Pod for SockRevNatKeyV6 {}
    unsafe impl aya::Pod for SockAffinityKeyV6 {}
    unsafe impl aya::Pod for SockRevNatValueV6 {}
}

#[cfg(test)]
mod tests {
    use super::{socket_hash_v4, socket_hash_v6};

    #[test]
    fn spreads_sequential_cookies_evenly() {
        let mut buckets = [0u32; 7];
        for cookie in 4096..4096 + 7000u64 {
            buckets[(socket_hash_v4(cookie, 0x0a60_000a, 80, 6) % 7) as usize] += 1;
        }
        for b in buckets {
            assert!((900..=1100).contains(&b), "{buckets:?}");
        }
    }

    #[test]
    fn every_cookie_bit_and_the_frontend_matter() {
        let a = socket_hash_v4(1, 2, 3, 6);
        assert_ne!(a, socket_hash_v4(1 | 1 << 40, 2, 3, 6));
        assert_ne!(a, socket_hash_v4(1, 3, 3, 6));
        assert_ne!(a, socket_hash_v4(1, 2, 3, 17));
    }

    #[test]
    fn every_word_of_an_ipv6_frontend_matters() {
        let vip = [0xfd00_0000, 0, 0, 0x4000_0000];
        let a = socket_hash_v6(1, vip, 80, 6);
        for word in 0..4 {
            let mut other = vip;
            other[word] ^= 1;
            assert_ne!(a, socket_hash_v6(1, other, 80, 6));
        }
        assert_ne!(a, socket_hash_v6(2, vip, 80, 6));
    }
}
