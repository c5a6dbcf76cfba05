//! Map names, sizes and key/value layouts. Addresses and ports are stored in
//! network byte order, exactly as they appear in the packet, so the packet
//! path never swaps bytes.

/// Names of the maps as they appear in the object file and under the pin
/// path, from one list: each pinned map is named once, and `ALL`, which
/// drives pinning, follows.
pub mod names {
    macro_rules! pinned {
        ($($name:ident),* $(,)?) => {
            $(pub const $name: &str = stringify!($name);)*
            /// Every map the agent pins.
            pub const ALL: &[&str] = &[$($name),*];
        };
    }

    pinned! {
        ADDRS_V4,
        FRONTENDS_V4,
        BACKENDS_V4,
        MAGLEV_SLOTS,
        CT_V4,
        STATS,
        SVC_STATS,
        CONFIG,
        IFACES,
        SVC_NAMES,
        AFFINITY_V4,
        SOURCE_RANGES_V4,
        FRAGS_V4,
        SOCK_REVNAT_V4,
        SOCK_AFFINITY_V4,
        FRONTENDS_V6,
        BACKENDS_V6,
        SOCK_REVNAT_V6,
        SOCK_AFFINITY_V6,
        CT_V6,
        AFFINITY_V6,
        PATH_V6_XDP,
        PATH_V6_TC,
        MONITOR,
        MONITOR_ON,
        ANNOUNCE_V4,
        LB_ADDRS_V4,
        CONFIG_V6,
        SOURCE_RANGES_V6,
        ADDRS_V6,
        ANNOUNCE_V6,
        LB_ADDRS_V6,
        FRAGS_V6,
        PATH_V6_FRAG_XDP,
        PATH_V6_FRAG_TC,
    }

    /// Not pinned: derived from `CT_V4`, so a new program starts it empty.
    pub const FLOW_CACHE_V4: &str = "FLOW_CACHE_V4";
    pub const FLOW_CACHE_V6: &str = "FLOW_CACHE_V6";
    /// The program's address filter global, an array map of one element
    /// named after its section. Not pinned: the agent rebuilds it from the
    /// other maps for every program it loads.
    pub const ADDR_FILTER: &str = ".bss.addr_filter";
    /// Working memory of the IPv6 path, holding nothing between packets.
    pub const SCRATCH_CT_V6: &str = "SCRATCH_CT_V6";
    pub const SCRATCH_NEW_V6: &str = "SCRATCH_NEW_V6";
    /// Maps of the object the agent does not pin.
    pub const UNPINNED: &[&str] = &[
        FLOW_CACHE_V4,
        FLOW_CACHE_V6,
        ADDR_FILTER,
        SCRATCH_CT_V6,
        SCRATCH_NEW_V6,
    ];
    /// Pins of earlier versions that no version reads any more, removed on load.
    pub const RETIRED: [&str; 1] = ["ADDR_FILTER"];
}

/// `PATH_V6_TC` index of the pod interfaces' IPv6 entry, `lb6_pod`.
pub const V6_POD: u32 = 0;
/// `PATH_V6_TC` index of the external interfaces' tc IPv6 entry, `lb6_tc`.
pub const V6_EXT: u32 = 1;

/// Default capacities; the agent may raise them at load time.
pub const MAX_ADDRS: u32 = 1 << 18;
pub const MAX_FRONTENDS: u32 = 1 << 18;
pub const MAX_BACKENDS: u32 = 1 << 20;
/// Slots of all Maglev rings together; each service owns a contiguous segment.
pub const MAX_MAGLEV_SLOTS: u32 = 1 << 24;
pub const MAX_CT: u32 = 1 << 19;
/// Service ids index `SVC_STATS`; id 0 is never handed out.
pub const MAX_SERVICES: u32 = 1 << 18;
pub const MAX_IFACES: u32 = 1024;
pub const MAX_AFFINITY: u32 = 1 << 18;
pub const MAX_SOURCE_RANGES: u32 = 1 << 14;
pub const MAX_FRAGS: u32 = 1 << 14;
/// Entries of `ANNOUNCE_V4`/`ANNOUNCE_V6` ((LoadBalancer address, external
/// interface) pairs this node answers ARP or NDP for) and of
/// `LB_ADDRS_V4`/`LB_ADDRS_V6` (pool addresses).
pub const MAX_ANNOUNCE: u32 = 1 << 14;
/// IPv6 ClusterIP ports (one a dual-stack Service port); smaller than the
/// IPv4 ones while IPv6 serves ClusterIPs only.
pub const MAX_FRONTENDS_V6: u32 = 1 << 16;
/// IPv6 endpoints, keyed by backend id (one id space with `BACKENDS_V4`).
pub const MAX_BACKENDS_V6: u32 = 1 << 16;
/// IPv6 flow entries (two per flow). LRU maps are always preallocated, so
/// this is memory every node pays (about 11 MiB) with or without IPv6
/// traffic; the agent can raise it.
pub const MAX_CT_V6: u32 = 1 << 16;
/// Entries of `AFFINITY_V6` (preallocated, as every LRU map).
pub const MAX_AFFINITY_V6: u32 = 1 << 14;

/// Bumped whenever a layout in this crate changes; pinned maps live under
/// `<pin-path>/v<LAYOUT_VERSION>` so an upgrade never reads foreign bytes.
/// A test holds the layouts to the record of this version
/// (`layouts/v<N>.txt`, see `layout.rs`).
pub const LAYOUT_VERSION: u32 = 2;

pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// `AddrInfo::flags`: the address is a frontend of some service (VIP, LB IP,
/// externalIP), so a miss on its port is rejected rather than passed.
pub const ADDR_FRONTEND: u32 = 1;

/// Value of `ADDRS_V4`, keyed by an IPv4 address (network order). Consulted
/// only when a packet to a filtered-in address matches no frontend port, to
/// tell "reject" from "not ours".
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AddrInfo {
    pub flags: u32,
}

/// Key of `FRONTENDS_V4`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FrontendKeyV4 {
    pub addr: u32,
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}

/// Key of `FRONTENDS_V6`: an IPv6 ClusterIP port. The address as the
/// socket hooks read it (`user_ip6`: four words in network order).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FrontendKeyV6 {
    pub addr: [u32; 4],
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}

/// Value of `FRONTENDS_V4` and `FRONTENDS_V6`. The whole value is replaced by one hash-map
/// update, which the kernel publishes atomically (a new element swapped in
/// under RCU), so a packet sees either the old ring or the new one, never a
/// mix. That is why ring position lives here and not in an array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FrontendValue {
    /// Index into `SVC_STATS`; identifies the service port.
    pub svc_id: u32,
    /// First slot of this service's ring in `MAGLEV_SLOTS`.
    pub ring_offset: u32,
    /// Ring size M (prime); 0 means the service has no backends (reject).
    pub ring_size: u32,
    /// `FE_*` bits.
    pub flags: u32,
    /// ClientIP session affinity timeout; 0 means no affinity.
    pub affinity_timeout_s: u32,
    pub _pad: u32,
}

/// `FrontendValue::flags`: the frontend serves traffic from outside the
/// cluster (NodePort, LoadBalancer, externalIP), so its ring holds the
/// externalTrafficPolicy backends rather than the internal ones.
pub const FE_EXTERNAL: u32 = 1;
/// With no backend, drop rather than reject: kube-proxy's behaviour for
/// externalTrafficPolicy or internalTrafficPolicy Local without local endpoints.
pub const FE_DROP_EMPTY: u32 = 2;
/// New flows from outside the cluster must come from the service's
/// loadBalancerSourceRanges (`SOURCE_RANGES_V4`).
pub const FE_SOURCE_RANGES: u32 = 4;

/// `BackendV4::flags`: the backend runs on this node, so traffic from outside
/// reaches it without source NAT (the reply passes back through this node).
pub const BE_LOCAL: u16 = 1;

/// Value of `BACKENDS_V4`, indexed by backend id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendV4 {
    pub addr: u32,
    pub port: u16,
    pub flags: u16,
}

/// Value of `BACKENDS_V6`, keyed by backend id: the ring of an IPv6
/// frontend holds ids of these only.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendV6 {
    pub addr: [u32; 4],
    pub port: u16,
    pub flags: u16,
}

/// Key of `CT_V4`: the packet's tuple as it arrives. Forward entries are keyed
/// by (client -> frontend), reverse entries by (backend -> client). The
/// reverse entry's value names the frontend, so two frontends sharing a
/// backend keep distinct forward entries; a client reusing one source port
/// towards two frontends with the same backend would need source-port
/// translation to be told apart on the reply (counted as `CtClash`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtKeyV4 {
    pub src_addr: u32,
    pub dst_addr: u32,
    pub src_port: u16,
    pub dst_port: u16,
    pub proto: u8,
    pub dir: u8,
    pub _pad: u16,
}

impl CtKeyV4 {
    /// The frontend a forward key addresses.
    #[inline(always)]
    pub const fn frontend(&self) -> FrontendKeyV4 {
        FrontendKeyV4 {
            addr: self.dst_addr,
            port: self.dst_port,
            proto: self.proto,
            _pad: 0,
        }
    }

    /// The flow's place on a Maglev ring.
    #[inline(always)]
    pub const fn hash(&self) -> u32 {
        crate::flow::flow_hash_v4(
            self.src_addr,
            self.dst_addr,
            self.src_port,
            self.dst_port,
            self.proto,
        )
    }

    /// The key from its two 64-bit words in memory order (little-endian,
    /// as BPF and the agent's hosts): the addresses, then the ports, the
    /// protocol and the direction in the low 48 bits. The headers hold the
    /// addresses and the ports in this same order, so the packet path
    /// builds a key from two loads and hashes and compares it as two words.
    pub const fn from_words(words: [u64; 2]) -> Self {
        // SAFETY: 16 bytes of plain integers, any bit pattern is valid.
        unsafe { core::mem::transmute::<[u64; 2], Self>(words) }
    }

    pub const fn words(&self) -> [u64; 2] {
        // SAFETY: as `from_words`; padding is an explicit field.
        unsafe { core::mem::transmute::<Self, [u64; 2]>(*self) }
    }
}

pub const CT_DIR_FORWARD: u8 = 0;
pub const CT_DIR_REPLY: u8 = 1;

/// Key of `CT_V6`: `CtKeyV4` with IPv6 addresses (four words each, as in
/// the packet). IPv6 flows get maps of their own, as in Cilium, so the
/// IPv4 key stays two words that the packet path loads, hashes and
/// compares as such.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtKeyV6 {
    pub src_addr: [u32; 4],
    pub dst_addr: [u32; 4],
    pub src_port: u16,
    pub dst_port: u16,
    pub proto: u8,
    pub dir: u8,
    pub _pad: u16,
}

impl CtKeyV6 {
    /// The frontend a forward key addresses.
    #[inline(always)]
    pub const fn frontend(&self) -> FrontendKeyV6 {
        FrontendKeyV6 {
            addr: self.dst_addr,
            port: self.dst_port,
            proto: self.proto,
            _pad: 0,
        }
    }

    /// The flow's place on a Maglev ring.
    #[inline(always)]
    pub const fn hash(&self) -> u32 {
        crate::flow::flow_hash_v6(
            self.src_addr,
            self.dst_addr,
            self.src_port,
            self.dst_port,
            self.proto,
        )
    }

    /// The key's last 32-bit word: the protocol, the direction and the
    /// padding, in memory order (little-endian, as BPF and the agent's
    /// hosts). The packet path writes the word whole, as it writes the
    /// ports' word: the flow cache compares keys as 32-bit words, and a
    /// word load from narrower stores cannot take their values from the
    /// store buffer (a stall each on x86).
    #[inline(always)]
    pub const fn tail(proto: u8, dir: u8) -> u32 {
        proto as u32 | (dir as u32) << 8
    }

    /// The key as five 64-bit words, for the flow cache's slot: the words
    /// its memory holds, put together from its fields. The key is 4-byte
    /// aligned, so a copy of it as `[u64; 5]` went through the stack, a
    /// quarter of the IPv6 path's time in a profile.
    #[inline(always)]
    pub const fn words(&self) -> [u64; 5] {
        const fn pair(lo: u32, hi: u32) -> u64 {
            lo as u64 | (hi as u64) << 32
        }
        let ([s0, s1, s2, s3], [d0, d1, d2, d3]) = (self.src_addr, self.dst_addr);
        let ports = self.src_port as u32 | (self.dst_port as u32) << 16;
        let tail = self.proto as u32 | (self.dir as u32) << 8 | (self._pad as u32) << 16;
        [
            pair(s0, s1),
            pair(s2, s3),
            pair(d0, d1),
            pair(d2, d3),
            pair(ports, tail),
        ]
    }
}

/// What connection tracking needs of a key, for either family.
pub trait CtKey: Copy {
    type Addr: crate::checksum::Addr;
    fn src(&self) -> (Self::Addr, u16);
    fn dst(&self) -> (Self::Addr, u16);
    fn proto(&self) -> u8;
    fn dir(&self) -> u8;
    /// The key of a reverse entry: a reply from `backend` to the client as
    /// the backend sees it (`seen`: the client itself, or the SNAT address
    /// and port that stood for it). Addresses and ports in network order.
    fn reply(backend: (Self::Addr, u16), seen: (Self::Addr, u16), proto: u8) -> Self;
    /// The forward entry's key of a flow from `client` to `frontend`.
    fn forward(client: (Self::Addr, u16), frontend: (Self::Addr, u16), proto: u8) -> Self;
    #[inline(always)]
    fn tuple(&self) -> crate::checksum::Tuple<Self::Addr> {
        let ((src, sport), (dst, dport)) = (self.src(), self.dst());
        crate::checksum::Tuple {
            src,
            dst,
            sport,
            dport,
        }
    }
}

macro_rules! ct_key {
    ($key:ident, $addr:ty) => {
        impl CtKey for $key {
            type Addr = $addr;
            #[inline(always)]
            fn src(&self) -> ($addr, u16) {
                (self.src_addr, self.src_port)
            }
            #[inline(always)]
            fn dst(&self) -> ($addr, u16) {
                (self.dst_addr, self.dst_port)
            }
            #[inline(always)]
            fn proto(&self) -> u8 {
                self.proto
            }
            #[inline(always)]
            fn dir(&self) -> u8 {
                self.dir
            }
            #[inline(always)]
            fn reply(backend: ($addr, u16), seen: ($addr, u16), proto: u8) -> Self {
                Self {
                    src_addr: backend.0,
                    dst_addr: seen.0,
                    src_port: backend.1,
                    dst_port: seen.1,
                    proto,
                    dir: CT_DIR_REPLY,
                    _pad: 0,
                }
            }
            #[inline(always)]
            fn forward(client: ($addr, u16), frontend: ($addr, u16), proto: u8) -> Self {
                Self {
                    src_addr: client.0,
                    dst_addr: frontend.0,
                    src_port: client.1,
                    dst_port: frontend.1,
                    proto,
                    dir: CT_DIR_FORWARD,
                    _pad: 0,
                }
            }
        }
    };
}
ct_key!(CtKeyV4, u32);
ct_key!(CtKeyV6, [u32; 4]);

/// Value of `CT_V4`. `nat_addr`/`nat_port` is what the packet is rewritten to:
/// the backend on forward entries (destination), the frontend on reverse
/// entries (source). The entry expires at `expires_ns`, which packets push
/// out together with the cached forwarding decision (`fwd_*`) at most once
/// per `CT_REFRESH_NS`, so an established packet reads no settings and
/// writes nothing. Times are `bpf_ktime_get_coarse_ns` (CLOCK_MONOTONIC).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtValueV4 {
    pub expires_ns: u64,
    pub last_seen_ns: u64,
    pub nat_addr: u32,
    pub nat_port: u16,
    /// `conntrack::STATE_*` bits.
    pub state: u8,
    /// How a translated packet leaves (`FWD_*`), decided with `fwd_ifindex`
    /// by a FIB lookup at most once per `CT_REFRESH_NS`.
    pub fwd_kind: u8,
    pub svc_id: u32,
    /// The egress interface the FIB chose for the translated packet (0:
    /// unknown), whose MTU a large packet is checked against; `fwd_kind`
    /// says whether the packet is redirected to it or routed by the kernel.
    pub fwd_ifindex: u32,
    pub fwd_smac: [u8; 6],
    pub fwd_dmac: [u8; 6],
    /// Source NAT: on forward entries the source the packet gets (a node
    /// address and a port of the SNAT range), on reverse entries the client
    /// the reply's destination is restored to. 0 when the flow is not
    /// source-translated.
    pub snat_port: u16,
    /// `checksum::RewriteSums` of this entry's rewrite, split around
    /// `snat_addr` to keep the value at 56 bytes.
    pub csum_addrs: u16,
    pub snat_addr: u32,
    pub csum_l4: u16,
    pub csum_pseudo: u16,
}

/// Value of `CT_V6`: `CtValueV4`'s fields with IPv6 addresses, laid out
/// so that none needs padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtValueV6 {
    pub expires_ns: u64,
    pub last_seen_ns: u64,
    pub nat_addr: [u32; 4],
    pub snat_addr: [u32; 4],
    pub nat_port: u16,
    pub snat_port: u16,
    pub state: u8,
    pub fwd_kind: u8,
    pub csum_addrs: u16,
    pub svc_id: u32,
    pub fwd_ifindex: u32,
    pub fwd_smac: [u8; 6],
    pub fwd_dmac: [u8; 6],
    pub csum_l4: u16,
    pub csum_pseudo: u16,
}

/// What connection tracking reads and writes of a value, for either
/// family. The packet path works on entries in place, through pointers into
/// the map: these are field projections, which make no reference.
pub trait CtValue: Copy + Default {
    type Addr: crate::checksum::Addr;
    /// Makes this a new entry rewriting to `nat`, of service `svc_id`,
    /// expiring at `expires_ns`; in place, so an IPv6 entry is never
    /// copied through the stack.
    fn init(&mut self, nat: (Self::Addr, u16), svc_id: u32, now: u64, expires_ns: u64);
    fn set_sums(&mut self, sums: crate::checksum::RewriteSums);
    fn set_nat(&mut self, nat: (Self::Addr, u16));
    fn set_snat(&mut self, snat: (Self::Addr, u16));
    /// # Safety
    /// `v` points to a valid entry.
    unsafe fn nat(v: *const Self) -> (Self::Addr, u16);
    /// The SNAT address and port; the unspecified address when none.
    ///
    /// # Safety
    /// `v` points to a valid entry.
    unsafe fn snat(v: *const Self) -> (Self::Addr, u16);
    /// # Safety
    /// `v` points to a valid entry.
    unsafe fn sums(v: *const Self) -> crate::checksum::RewriteSums;
    /// What inspection shows of an entry read out of the map.
    fn summary(&self) -> CtSummary;
    /// # Safety
    /// `v` points to a valid entry.
    unsafe fn svc_id(v: *const Self) -> u32;
    fn state(v: *mut Self) -> *mut u8;
    fn expires_ns(v: *mut Self) -> *mut u64;
    fn last_seen_ns(v: *mut Self) -> *mut u64;
    fn fwd_kind(v: *mut Self) -> *mut u8;
    fn fwd_ifindex(v: *mut Self) -> *mut u32;
    fn fwd_smac(v: *mut Self) -> *mut [u8; 6];
    fn fwd_dmac(v: *mut Self) -> *mut [u8; 6];
}

/// What `CtValue::summary` gives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtSummary {
    pub state: u8,
    pub svc_id: u32,
    pub last_seen_ns: u64,
    pub expires_ns: u64,
}

macro_rules! ct_value {
    ($value:ident, $addr:ty) => {
        impl CtValue for $value {
            type Addr = $addr;
            #[inline(always)]
            fn init(&mut self, nat: ($addr, u16), svc_id: u32, now: u64, expires_ns: u64) {
                self.expires_ns = expires_ns;
                self.last_seen_ns = now;
                (self.nat_addr, self.nat_port) = nat;
                self.snat_addr = Default::default();
                self.snat_port = 0;
                self.state = 0;
                self.fwd_kind = 0;
                self.svc_id = svc_id;
                self.fwd_ifindex = 0;
                self.fwd_smac = [0; 6];
                self.fwd_dmac = [0; 6];
            }
            #[inline(always)]
            fn set_sums(&mut self, sums: crate::checksum::RewriteSums) {
                self.csum_addrs = sums.addrs;
                self.csum_l4 = sums.l4;
                self.csum_pseudo = sums.pseudo;
            }
            #[inline(always)]
            fn set_nat(&mut self, nat: ($addr, u16)) {
                (self.nat_addr, self.nat_port) = nat;
            }
            #[inline(always)]
            fn set_snat(&mut self, snat: ($addr, u16)) {
                (self.snat_addr, self.snat_port) = snat;
            }
            #[inline(always)]
            unsafe fn nat(v: *const Self) -> ($addr, u16) {
                unsafe { ((*v).nat_addr, (*v).nat_port) }
            }
            #[inline(always)]
            unsafe fn snat(v: *const Self) -> ($addr, u16) {
                unsafe { ((*v).snat_addr, (*v).snat_port) }
            }
            #[inline(always)]
            unsafe fn sums(v: *const Self) -> crate::checksum::RewriteSums {
                unsafe {
                    crate::checksum::RewriteSums {
                        addrs: (*v).csum_addrs,
                        l4: (*v).csum_l4,
                        pseudo: (*v).csum_pseudo,
                    }
                }
            }
            fn summary(&self) -> CtSummary {
                CtSummary {
                    state: self.state,
                    svc_id: self.svc_id,
                    last_seen_ns: self.last_seen_ns,
                    expires_ns: self.expires_ns,
                }
            }
            #[inline(always)]
            unsafe fn svc_id(v: *const Self) -> u32 {
                unsafe { (*v).svc_id }
            }
            #[inline(always)]
            fn state(v: *mut Self) -> *mut u8 {
                v.wrapping_byte_add(core::mem::offset_of!(Self, state))
                    .cast()
            }
            #[inline(always)]
            fn expires_ns(v: *mut Self) -> *mut u64 {
                v.wrapping_byte_add(core::mem::offset_of!(Self, expires_ns))
                    .cast()
            }
            #[inline(always)]
            fn last_seen_ns(v: *mut Self) -> *mut u64 {
                v.wrapping_byte_add(core::mem::offset_of!(Self, last_seen_ns))
                    .cast()
            }
            #[inline(always)]
            fn fwd_kind(v: *mut Self) -> *mut u8 {
                v.wrapping_byte_add(core::mem::offset_of!(Self, fwd_kind))
                    .cast()
            }
            #[inline(always)]
            fn fwd_ifindex(v: *mut Self) -> *mut u32 {
                v.wrapping_byte_add(core::mem::offset_of!(Self, fwd_ifindex))
                    .cast()
            }
            #[inline(always)]
            fn fwd_smac(v: *mut Self) -> *mut [u8; 6] {
                v.wrapping_byte_add(core::mem::offset_of!(Self, fwd_smac))
                    .cast()
            }
            #[inline(always)]
            fn fwd_dmac(v: *mut Self) -> *mut [u8; 6] {
                v.wrapping_byte_add(core::mem::offset_of!(Self, fwd_dmac))
                    .cast()
            }
        }
    };
}
ct_value!(CtValueV4, u32);
ct_value!(CtValueV6, [u32; 4]);

pub const CT_REFRESH_NS: u64 = 1_000_000_000;

/// Slots of `FLOW_CACHE_V4` and of `FLOW_CACHE_V6` per CPU (a power of two).
pub const FLOW_CACHE_SLOTS: u32 = 2048;

/// How long a `FLOW_CACHE_V4` copy may be used, in jiffies: at most a
/// `CT_REFRESH_NS` for any tick rate from 64 Hz up (kernels use 100-1000).
/// Jiffies because the verifier inlines `bpf_jiffies64` into one load, where
/// a nanosecond clock is a helper call: 2 ns of a 26 ns cached packet.
pub const FLOW_CACHE_JIFFIES: u64 = 64;

/// Value of the per-CPU `FLOW_CACHE_V4`: a copy of an established flow's
/// `CT_V4` entry, so that its next packets on this CPU skip the hash-map
/// lookup (an exact-match cache, as Open vSwitch's EMC). Until
/// `until_jiffies`, then the packet goes to `CT_V4`, which so keeps expiry,
/// recency and the forwarding decision at most a refresh behind.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowCacheEntryV4 {
    pub key: CtKeyV4,
    pub ct: CtValueV4,
    pub until_jiffies: u64,
}

/// The `FLOW_CACHE_V4` slot of `key`: a multiplicative hash, far cheaper
/// than the kernel's jhash, which is what the cache saves.
#[inline(always)]
pub const fn flow_cache_slot(key: &CtKeyV4) -> u32 {
    let [addrs, rest] = key.words();
    cache_slot(addrs ^ rest.wrapping_mul(0xff51_afd7_ed55_8ccd))
}

/// `FlowCacheEntryV4` of an IPv6 flow, in the per-CPU `FLOW_CACHE_V6`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowCacheEntryV6 {
    pub key: CtKeyV6,
    pub ct: CtValueV6,
    pub until_jiffies: u64,
}

/// The `FLOW_CACHE_V6` slot of `key`, hashed as `flow_cache_slot`.
#[inline(always)]
pub const fn flow_cache_slot_v6(key: &CtKeyV6) -> u32 {
    let [s0, s1, d0, d1, rest] = key.words();
    cache_slot(s0 ^ s1 ^ (d0 ^ d1 ^ rest).wrapping_mul(0xff51_afd7_ed55_8ccd))
}

#[inline(always)]
const fn cache_slot(mixed: u64) -> u32 {
    let h = mixed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (h >> (64 - FLOW_CACHE_SLOTS.trailing_zeros())) as u32
}

/// The single element of `CONFIG`: settings the agent writes at start-up.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    pub tcp_established_timeout_s: u32,
    pub tcp_syn_timeout_s: u32,
    pub tcp_closing_timeout_s: u32,
    /// Seconds a UDP flow that has seen a reply lives idle.
    pub udp_timeout_s: u32,
    /// This node's address for source NAT (network order); 0 disables SNAT.
    pub snat_addr: u32,
    /// The ports a flow whose client's port is taken may get.
    pub snat_ports: crate::snat::SnatPorts,
    /// Seconds a UDP flow that has seen no reply lives idle.
    pub udp_unreplied_timeout_s: u32,
    /// `SO_NETNS_COOKIE` of the node's own network namespace; 0 while
    /// unknown. The socket hooks leave UDP of other namespaces (pods) to
    /// the per-packet path, whose flows are forgotten when their backend
    /// goes; the agent closes the node's own UDP sockets itself.
    pub host_netns_cookie: u64,
}

impl Config {
    /// Idle lifetimes: an established TCP connection 24 h, as kube-proxy's
    /// `--conntrack-tcp-timeout-established` default sets netfilter's (a
    /// connection idle longer than Cilium's 6 h survives, as it does under
    /// kube-proxy); an unanswered SYN 60 s and a closed connection 10 s,
    /// Cilium's; UDP without a reply 30 s, netfilter's. A UDP flow with a
    /// reply 60 s: netfilter keeps one 120 s only once it is still active
    /// 2 s after its first packet, and 30 s before, so a one-exchange flow
    /// (a DNS query) gets 30 s; a flat 120 s would hold those flows, and
    /// their SNAT ports, four times as long. The agent's `--conntrack-*`
    /// flags set them. The packet path also uses these while the agent has
    /// not written `CONFIG`.
    pub const DEFAULT: Config = Config {
        tcp_established_timeout_s: 86_400,
        tcp_syn_timeout_s: 60,
        tcp_closing_timeout_s: 10,
        udp_timeout_s: 60,
        snat_addr: 0,
        snat_ports: crate::snat::SnatPorts::DEFAULT,
        udp_unreplied_timeout_s: 30,
        host_netns_cookie: 0,
    };
}

impl Default for Config {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// The single element of `CONFIG_V6`: the IPv6 settings, in a map of
/// their own so that the IPv4 path's copy of `Config` per new flow stays
/// as small as it was.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConfigV6 {
    /// This node's IPv6 address for source NAT, as in the header; the
    /// unspecified address disables IPv6 SNAT. The ports are `Config`'s.
    pub snat_addr: [u32; 4],
    /// Non-zero when the socket hooks leave pods' IPv6 UDP to the
    /// per-packet path, as they leave IPv4's: set by the agent when the
    /// IPv6 path is loaded and has a SNAT address, which a pod reaching
    /// itself through its Service needs there.
    pub pods_udp_per_packet: u32,
    pub _pad: u32,
}

/// `CtValueV4::fwd_kind`: hand the translated packet to the kernel to route.
pub const FWD_KERNEL: u8 = 0;
/// `bpf_redirect` to `fwd_ifindex` with the MACs the FIB gave.
pub const FWD_REDIRECT: u8 = 1;
/// tc only: `bpf_redirect_peer` into the pod behind the veth `fwd_ifindex`,
/// which skips the host's backlog queue and the pod-side veth's transmit.
pub const FWD_PEER: u8 = 2;
/// tc only: `bpf_redirect_neigh` to `fwd_ifindex`, the kernel resolving
/// the next hop's MAC (the FIB knew the route but not the neighbour yet).
pub const FWD_NEIGH: u8 = 3;
/// `fwd_kind` bit beside the kind: the egress takes XDP frames, so XDP
/// redirects the frame itself instead of passing it to tc through
/// `meta::XdpMeta`.
pub const FWD_XDP: u8 = 0x80;

/// `IFACES` flag: XDP may `bpf_redirect` to this interface. Only set for
/// devices whose receiver handles XDP frames (a real NIC, or a veth whose
/// peer runs an XDP program); other egress goes through `XDP_PASS`.
pub const IFACE_REDIRECT: u32 = 1;
/// `IFACES` flag: a pod-facing interface; traffic entering here is
/// in-cluster, which loadBalancerSourceRanges do not filter.
pub const IFACE_POD: u32 = 2;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IfaceInfo {
    pub flags: u32,
}

/// Key of `AFFINITY_V4`: one client of one frontend.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AffinityKeyV4 {
    pub frontend: FrontendKeyV4,
    pub client_addr: u32,
}

/// Key of `AFFINITY_V6`: one IPv6 client of one frontend.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AffinityKeyV6 {
    pub frontend: FrontendKeyV6,
    pub client_addr: [u32; 4],
}

/// Value of `AFFINITY_V4` and `AFFINITY_V6`: the backend the client sticks to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AffinityValue {
    pub last_seen_ns: u64,
    pub backend_id: u32,
    pub _pad: u32,
}

/// Key of the `SOURCE_RANGES_V4` LPM trie (the prefix length, which the trie
/// keeps beside the key, counts 32 bits of `svc_id` plus the CIDR's length).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourceRangeKeyV4 {
    /// Big-endian, so the service id is the leading part of the prefix.
    pub svc_id_be: u32,
    pub addr: u32,
}

impl SourceRangeKeyV4 {
    /// Prefix length of a lookup: the service id and the whole address.
    pub const LOOKUP_BITS: u32 = 64;

    /// The key that looks client `src` up among `svc_id`'s ranges.
    #[inline(always)]
    pub const fn lookup(svc_id: u32, src: u32) -> Self {
        Self {
            svc_id_be: svc_id.to_be(),
            addr: src,
        }
    }
}

/// Key of the `SOURCE_RANGES_V6` LPM trie: `SourceRangeKeyV4` with an
/// IPv6 address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourceRangeKeyV6 {
    /// Big-endian, so the service id is the leading part of the prefix.
    pub svc_id_be: u32,
    pub addr: [u32; 4],
}

impl SourceRangeKeyV6 {
    /// Prefix length of a lookup: the service id and the whole address.
    pub const LOOKUP_BITS: u32 = 160;

    /// The key that looks client `src` up among `svc_id`'s ranges.
    #[inline(always)]
    pub const fn lookup(svc_id: u32, src: [u32; 4]) -> Self {
        Self {
            svc_id_be: svc_id.to_be(),
            addr: src,
        }
    }
}

/// Key of `FRAGS_V4`: one datagram being fragmented, as it arrives.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragKeyV4 {
    pub src_addr: u32,
    pub dst_addr: u32,
    pub id: u16,
    pub proto: u8,
    pub _pad: u8,
}

/// Value of `FRAGS_V4`: the addresses the first fragment was given, for the
/// later fragments, which carry no ports to look a flow up by.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragValueV4 {
    pub src_addr: u32,
    pub dst_addr: u32,
}

/// Key of `FRAGS_V6`: one IPv6 datagram being fragmented, as it arrives
/// (with its Fragment header's identification and upper-layer protocol).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragKeyV6 {
    pub src_addr: [u32; 4],
    pub dst_addr: [u32; 4],
    pub id: u32,
    pub proto: u8,
    pub _pad: [u8; 3],
}

/// Value of `FRAGS_V6`, as `FragValueV4`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragValueV6 {
    pub src_addr: [u32; 4],
    pub dst_addr: [u32; 4],
}

/// Key of `ANNOUNCE_V4`: a LoadBalancer address (network order) this node
/// announces, on one of its external interfaces. Keyed by interface too:
/// each interface answers with its own MAC, and an ARP request is answered
/// only on the interfaces the agent chose.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AnnounceKeyV4 {
    pub addr: u32,
    pub ifindex: u32,
}

/// Key of `ANNOUNCE_V6`: `AnnounceKeyV4` for an IPv6 address (its words
/// as in the packet), answered to Neighbour Solicitations.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AnnounceKeyV6 {
    pub addr: [u32; 4],
    pub ifindex: u32,
}

/// Value of `ANNOUNCE_V4` and `ANNOUNCE_V6`: the MAC the ARP reply or
/// Neighbour Advertisement names, the interface's own.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AnnounceValue {
    pub mac: [u8; 6],
    pub _pad: u16,
}

/// Bytes of `LbAddrInfo::pool`: the longest IPv4 pool name, a range of two
/// dotted quads (31), zero-padded. IPv6 pool names longer than this (a
/// range of two long addresses) are cut, for inspection only.
pub const LB_POOL_NAME_LEN: usize = 32;
/// Bytes of `LbAddrInfo::node`: a Node's name is a DNS subdomain, at most 253.
pub const LB_NODE_NAME_LEN: usize = 256;

/// Value of `LB_ADDRS_V4` and `LB_ADDRS_V6`, keyed by a LoadBalancer
/// address from the pools (network order): its pool and the node that announces it, both
/// zero-padded text, empty when no node may. Written by every agent for
/// every allocated address; only the agent and the CLI read it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LbAddrInfo {
    pub pool: [u8; LB_POOL_NAME_LEN],
    pub node: [u8; LB_NODE_NAME_LEN],
}

impl LbAddrInfo {
    /// Longer names are cut, which the agent's pool names and valid Node
    /// names never are.
    pub fn new(pool: &str, node: &str) -> Self {
        let mut v = Self {
            pool: [0; LB_POOL_NAME_LEN],
            node: [0; LB_NODE_NAME_LEN],
        };
        let p = pool.len().min(LB_POOL_NAME_LEN);
        v.pool[..p].copy_from_slice(&pool.as_bytes()[..p]);
        let n = node.len().min(LB_NODE_NAME_LEN);
        v.node[..n].copy_from_slice(&node.as_bytes()[..n]);
        v
    }

    pub fn pool(&self) -> &str {
        zero_padded(&self.pool)
    }

    /// "" when no node may announce the address.
    pub fn node(&self) -> &str {
        zero_padded(&self.node)
    }
}

fn zero_padded(bytes: &[u8]) -> &str {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    core::str::from_utf8(&bytes[..end]).unwrap_or("")
}

/// Per service port, per CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SvcStats {
    pub packets: u64,
    pub bytes: u64,
}

const _: () = {
    assert!(core::mem::size_of::<AddrInfo>() == 4);
    assert!(core::mem::size_of::<FrontendKeyV4>() == 8);
    assert!(core::mem::size_of::<FrontendValue>() == 24);
    assert!(core::mem::size_of::<AffinityKeyV4>() == 12);
    assert!(core::mem::size_of::<AffinityValue>() == 16);
    assert!(core::mem::size_of::<SourceRangeKeyV4>() == 8);
    assert!(core::mem::size_of::<FragKeyV4>() == 12);
    assert!(core::mem::size_of::<FragValueV4>() == 8);
    assert!(core::mem::size_of::<FragKeyV6>() == 40);
    assert!(core::mem::size_of::<FragValueV6>() == 32);
    assert!(core::mem::size_of::<BackendV4>() == 8);
    assert!(core::mem::size_of::<FrontendKeyV6>() == 20);
    assert!(core::mem::size_of::<BackendV6>() == 20);
    assert!(core::mem::size_of::<CtKeyV4>() == 16);
    assert!(core::mem::size_of::<CtValueV4>() == 56);
    assert!(core::mem::size_of::<CtKeyV6>() == 40);
    assert!(core::mem::size_of::<CtValueV6>() == 80);
    assert!(core::mem::size_of::<AffinityKeyV6>() == 36);
    assert!(core::mem::size_of::<FlowCacheEntryV4>() == 80);
    assert!(core::mem::size_of::<FlowCacheEntryV6>() == 128);
    assert!(core::mem::size_of::<Config>() == 40);
    assert!(core::mem::size_of::<ConfigV6>() == 24);
    assert!(core::mem::size_of::<SourceRangeKeyV6>() == 20);
    assert!(core::mem::size_of::<IfaceInfo>() == 4);
    assert!(core::mem::size_of::<SvcStats>() == 16);
    assert!(core::mem::size_of::<AnnounceKeyV4>() == 8);
    assert!(core::mem::size_of::<AnnounceValue>() == 8);
    assert!(core::mem::size_of::<AnnounceKeyV6>() == 20);
    assert!(core::mem::size_of::<LbAddrInfo>() == 288);
};

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all are repr(C), Copy, with explicit padding and no invalid bit patterns.
    unsafe impl aya::Pod for AddrInfo {}
    unsafe impl aya::Pod for FrontendKeyV4 {}
    unsafe impl aya::Pod for FrontendValue {}
    unsafe impl aya::Pod for BackendV4 {}
    unsafe impl aya::Pod for FrontendKeyV6 {}
    unsafe impl aya::Pod for BackendV6 {}
    unsafe impl aya::Pod for CtKeyV4 {}
    unsafe impl aya::Pod for CtValueV4 {}
    unsafe impl aya::Pod for CtKeyV6 {}
    unsafe impl aya::Pod for CtValueV6 {}
    unsafe impl aya::Pod for FlowCacheEntryV6 {}
    unsafe impl aya::Pod for AffinityKeyV6 {}
    unsafe impl aya::Pod for FlowCacheEntryV4 {}
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for ConfigV6 {}
    unsafe impl aya::Pod for SourceRangeKeyV6 {}
    unsafe impl aya::Pod for IfaceInfo {}
    unsafe impl aya::Pod for SvcStats {}
    unsafe impl aya::Pod for AffinityKeyV4 {}
    unsafe impl aya::Pod for AffinityValue {}
    unsafe impl aya::Pod for SourceRangeKeyV4 {}
    unsafe impl aya::Pod for FragKeyV4 {}
    unsafe impl aya::Pod for FragValueV4 {}
    unsafe impl aya::Pod for AnnounceKeyV4 {}
    unsafe impl aya::Pod for AnnounceValue {}
    unsafe impl aya::Pod for AnnounceKeyV6 {}
    unsafe impl aya::Pod for LbAddrInfo {}
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The words are those of the key's memory, as a copy of it would read
    /// them on this (little-endian) machine, as BPF's: the slot of a key is
    /// what it was.
    #[test]
    fn ct_key_v6_words_are_its_memory() {
        let key = CtKeyV6 {
            src_addr: [0x0100_00fd, 0x0200_0000, 0x0300_0000, 0x0400_0000],
            dst_addr: [0x0500_00fd, 0x0600_0000, 0x0700_0000, 0x0800_0000],
            src_port: 0x409c,
            dst_port: 0x5000,
            proto: PROTO_TCP,
            dir: CT_DIR_REPLY,
            _pad: 0xabcd,
        };
        // SAFETY: 40 bytes of plain integers without padding.
        let memory = unsafe { core::mem::transmute::<CtKeyV6, [u64; 5]>(key) };
        assert_eq!(key.words(), memory);
    }

    /// The word the packet path writes for the protocol and the direction
    /// is those two fields in the key's memory.
    #[test]
    fn ct_key_v6_tail_is_its_last_word() {
        let key = CtKeyV6 {
            proto: PROTO_TCP,
            dir: CT_DIR_REPLY,
            ..Default::default()
        };
        // SAFETY: 40 bytes of plain integers without padding.
        let memory = unsafe { core::mem::transmute::<CtKeyV6, [u32; 10]>(key) };
        assert_eq!(CtKeyV6::tail(PROTO_TCP, CT_DIR_REPLY), memory[9]);
    }

    /// The two words the packet path loads from the headers (the IPv4
    /// source and destination, the L4 ports) make the key of that tuple.
    #[test]
    fn ct_key_words_are_the_header_bytes_in_order() {
        let ip_addrs = [10, 0, 0, 1, 10, 96, 0, 7];
        let l4_ports = [0x9c, 0x40, 0x00, 0x50];
        let addrs = u64::from_le_bytes(ip_addrs);
        let ports = u32::from_le_bytes(l4_ports) as u64;
        let key = CtKeyV4::from_words([addrs, ports | (PROTO_TCP as u64) << 32 | 1 << 40]);
        assert_eq!(
            key,
            CtKeyV4 {
                src_addr: u32::from_ne_bytes([10, 0, 0, 1]),
                dst_addr: u32::from_ne_bytes([10, 96, 0, 7]),
                src_port: 40000u16.to_be(),
                dst_port: 80u16.to_be(),
                proto: PROTO_TCP,
                dir: CT_DIR_REPLY,
                _pad: 0,
            }
        );
        assert_eq!(CtKeyV4::from_words(key.words()), key);
    }

    #[test]
    fn lb_addr_info_holds_its_names_as_text() {
        let v = LbAddrInfo::new("192.168.50.200-192.168.50.220", "node-1.example.com");
        assert_eq!(v.pool(), "192.168.50.200-192.168.50.220");
        assert_eq!(v.node(), "node-1.example.com");
        assert_eq!(LbAddrInfo::new("10.0.0.0/30", "").node(), "");
    }
}
