//! Every map of the program. Layouts live in `lb-common`; the agent writes
//! all of them except `CT_V4` (the packet path) and the counters.
//!
//! Unsafe in this module: the attributes that give `ADDR_FILTER` an
//! unmangled symbol and a section of its own, which the loader turns into a
//! map the agent finds by that name; no other symbol has that name or
//! section. The program only reads the global (volatile, in `service`), the
//! agent only writes it.
use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, BPF_F_NO_PREALLOC},
    btf_maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, ProgramArray, RingBuf},
    macros::btf_map,
};
use lb_common::{monitor::MonitorEvent, *};

/// Addresses that concern us at all (frontends, backends): the one lookup
/// every packet pays.
#[btf_map]
pub static ADDRS_V4: HashMap<u32, AddrInfo, { MAX_ADDRS as usize }> = HashMap::new();

/// `ADDRS_V4` for IPv6 addresses: consulted only when a packet to an IPv6
/// address matches no frontend port.
#[btf_map]
pub static ADDRS_V6: HashMap<[u32; 4], AddrInfo, { MAX_ADDRS as usize }> = HashMap::new();

/// Service frontends (ClusterIP, LB IP, externalIP, NodePort) to their ring.
#[btf_map]
pub static FRONTENDS_V4: HashMap<FrontendKeyV4, FrontendValue, { MAX_FRONTENDS as usize }> =
    HashMap::new();

/// Backends by id; ids are stable across agent resyncs and restarts.
#[btf_map]
pub static BACKENDS_V4: Array<BackendV4, { MAX_BACKENDS as usize }> = Array::new();

/// All Maglev rings, each a segment of backend ids owned by one frontend set.
/// Memory-mappable so the agent writes whole rings with memcpy instead of a
/// syscall per slot (aya has no batch update).
#[btf_map]
pub static MAGLEV_SLOTS: Array<u32, { MAX_MAGLEV_SLOTS as usize }, { BPF_F_MMAPABLE as usize }> =
    Array::new();

/// Connection tracking: forward and reverse entries of every translated flow.
#[btf_map]
pub static CT_V4: LruHashMap<CtKeyV4, CtValueV4, { MAX_CT as usize }> = LruHashMap::new();

/// Per-CPU copies of established flows' `CT_V4` entries (`flow_cache`).
#[btf_map]
pub static FLOW_CACHE_V4: PerCpuArray<FlowCacheEntryV4, { FLOW_CACHE_SLOTS as usize }> =
    PerCpuArray::new();

/// Per-CPU copies of established IPv6 flows' `CT_V6` entries, as
/// `FLOW_CACHE_V4`.
#[btf_map]
pub static FLOW_CACHE_V6: PerCpuArray<FlowCacheEntryV6, { FLOW_CACHE_SLOTS as usize }> =
    PerCpuArray::new();

/// Path counters indexed by `lb_common::Reason`.
#[btf_map]
pub static STATS: PerCpuArray<u64, { Reason::COUNT as usize }> = PerCpuArray::new();

/// Packets and bytes per service port, indexed by `FrontendValue::svc_id`.
#[btf_map]
pub static SVC_STATS: PerCpuArray<SvcStats, { MAX_SERVICES as usize }> = PerCpuArray::new();

/// Element 0 holds the timeouts; all zero until the agent writes it.
#[btf_map]
pub static CONFIG: Array<Config, 1> = Array::new();

/// Egress interfaces XDP may redirect to, by ifindex.
#[btf_map]
pub static IFACES: HashMap<u32, IfaceInfo, { MAX_IFACES as usize }> = HashMap::new();

/// Address bitmap (`lb_common::filter`): the cheap "not ours" test that
/// every packet pays. A global rather than a map: the program addresses it
/// directly, where a map lookup spills the key to the stack, reloads it,
/// bounds-checks it and null-checks the result, twice per packet (2.5 ns of
/// the 5 ns non-frontend traffic cost over the no-op floor). Its own section
/// makes it its own array map, sized exactly, that the agent rewrites whole.
#[unsafe(no_mangle)]
#[unsafe(link_section = ".bss.addr_filter")]
pub static mut ADDR_FILTER: [u64; lb_common::filter::FILTER_WORDS as usize] =
    [0; lb_common::filter::FILTER_WORDS as usize];

/// Service names by id, for the agent's restarts and for people reading maps.
#[btf_map]
pub static SVC_NAMES: HashMap<u32, SvcName, { MAX_SERVICES as usize }> = HashMap::new();

/// ClientIP session affinity: the backend each client of a frontend sticks to.
#[btf_map]
pub static AFFINITY_V4: LruHashMap<AffinityKeyV4, AffinityValue, { MAX_AFFINITY as usize }> =
    LruHashMap::new();

/// loadBalancerSourceRanges per service id.
#[btf_map]
pub static SOURCE_RANGES_V4: LpmTrie<SourceRangeKeyV4, u32, { MAX_SOURCE_RANGES as usize }> =
    LpmTrie::new();

/// Translations of fragmented datagrams, by (addresses, IP id), for the
/// fragments after the first.
#[btf_map]
pub static FRAGS_V4: LruHashMap<FragKeyV4, FragValueV4, { MAX_FRAGS as usize }> = LruHashMap::new();

/// `FRAGS_V4` for IPv6 datagrams.
#[btf_map]
pub static FRAGS_V6: LruHashMap<FragKeyV6, FragValueV6, { MAX_FRAGS as usize }> = LruHashMap::new();

/// The frontend each socket of the node's own processes addressed, by
/// (socket, backend), so `recvmsg4` gives UDP replies the source the
/// application sent to, and `getpeername4` names it as the peer.
#[btf_map]
pub static SOCK_REVNAT_V4: LruHashMap<
    lb_common::sock::SockRevNatKeyV4,
    lb_common::sock::SockRevNatValueV4,
    { lb_common::sock::MAX_SOCK_REVNAT as usize },
> = LruHashMap::new();

/// ClientIP affinity of the socket hooks, by network namespace (see
/// `SockAffinityKeyV4`).
#[btf_map]
pub static SOCK_AFFINITY_V4: LruHashMap<
    lb_common::sock::SockAffinityKeyV4,
    AffinityValue,
    { lb_common::sock::MAX_SOCK_AFFINITY as usize },
> = LruHashMap::new();

/// IPv6 ClusterIP ports to their ring, for the socket hooks. Not
/// preallocated: only the agent writes it, and a node without IPv6
/// Services pays no memory for it.
#[btf_map]
pub static FRONTENDS_V6: HashMap<
    FrontendKeyV6,
    FrontendValue,
    { MAX_FRONTENDS_V6 as usize },
    { BPF_F_NO_PREALLOC as usize },
> = HashMap::new();

/// IPv6 backends by id, from the id space of `BACKENDS_V4`: a hash map, so
/// the ids IPv4 backends hold cost it nothing; not preallocated, as
/// `FRONTENDS_V6`.
#[btf_map]
pub static BACKENDS_V6: HashMap<
    u32,
    BackendV6,
    { MAX_BACKENDS_V6 as usize },
    { BPF_F_NO_PREALLOC as usize },
> = HashMap::new();

/// As `SOCK_REVNAT_V4`, for sockets sent to an IPv6 backend.
#[btf_map]
pub static SOCK_REVNAT_V6: LruHashMap<
    lb_common::sock::SockRevNatKeyV6,
    lb_common::sock::SockRevNatValueV6,
    { lb_common::sock::MAX_SOCK_REVNAT as usize },
> = LruHashMap::new();

/// As `SOCK_AFFINITY_V4`, for IPv6 frontends.
#[btf_map]
pub static SOCK_AFFINITY_V6: LruHashMap<
    lb_common::sock::SockAffinityKeyV6,
    AffinityValue,
    { lb_common::sock::MAX_SOCK_AFFINITY as usize },
> = LruHashMap::new();

/// Connection tracking of IPv6 flows, as `CT_V4`.
#[btf_map]
pub static CT_V6: LruHashMap<CtKeyV6, CtValueV6, { MAX_CT_V6 as usize }> = LruHashMap::new();

/// Where the IPv6 path builds a new flow's entries: IPv6 entries are too
/// big to build on the stack beside everything else the path holds.
#[btf_map]
pub static SCRATCH_CT_V6: PerCpuArray<CtValueV6, 1> = PerCpuArray::new();

/// Set by an IPv6 entry that made a new flow's entries and hands its
/// first packet to the entry again (`service6::new_flow`), which then
/// counts the packet as the new flow it is; holds nothing between packets.
#[btf_map]
pub static SCRATCH_NEW_V6: PerCpuArray<u32, 1> = PerCpuArray::new();

/// Element 0 holds the IPv6 SNAT address; all zero (no SNAT) until the
/// agent writes it.
#[btf_map]
pub static CONFIG_V6: Array<ConfigV6, 1> = Array::new();

/// loadBalancerSourceRanges of IPv6 clients per service id, as
/// `SOURCE_RANGES_V4`.
#[btf_map]
pub static SOURCE_RANGES_V6: LpmTrie<SourceRangeKeyV6, u32, { MAX_SOURCE_RANGES as usize }> =
    LpmTrie::new();

/// ClientIP affinity of IPv6 clients on the packet path, as `AFFINITY_V4`.
#[btf_map]
pub static AFFINITY_V6: LruHashMap<AffinityKeyV6, AffinityValue, { MAX_AFFINITY_V6 as usize }> =
    LruHashMap::new();

/// The IPv6 path's XDP entry (`lb6`), which `lb` tail-calls: a tail call
/// starts the IPv6 path with a stack of its own, where a function call
/// would stack its frames on top of the IPv4 path's. Filled by the agent
/// with the programs it loads (see the agent's `datapath::path_v6`).
#[btf_map]
pub static PATH_V6_XDP: ProgramArray<1> = ProgramArray::new();

/// The IPv6 path's tc entries: `lb6_pod` at `V6_POD`, `lb6_tc` at `V6_EXT`.
#[btf_map]
pub static PATH_V6_TC: ProgramArray<2> = ProgramArray::new();

/// The entries of the IPv6 path for fragments (`lb6_frag`, and
/// `lb6_frag_pod`/`lb6_frag_tc` at `V6_POD`/`V6_EXT`), which the IPv6
/// entries tail-call for a packet whose first extension header is a
/// Fragment header: the same path, built once more with the fragment
/// handling in, so that its verifier walk (as long as the path's own)
/// comes on top of no other. The IPv4 entries hand them ICMPv6 too, so
/// that the IPv6 entries run their path in their own frame.
#[btf_map]
pub static PATH_V6_FRAG_XDP: ProgramArray<1> = ProgramArray::new();
#[btf_map]
pub static PATH_V6_FRAG_TC: ProgramArray<2> = ProgramArray::new();

/// Events for `xdplb monitor`, written only under its lease (`monitor.rs`).
#[btf_map]
pub static MONITOR: RingBuf<MonitorEvent, { lb_common::monitor::MONITOR_RING_BYTES as usize }> =
    RingBuf::new();

/// Element 0: until when (`bpf_ktime_get_ns`) a running `xdplb monitor`
/// wants events, renewed by it every second; 0 when none runs.
#[btf_map]
pub static MONITOR_ON: Array<u64, 1> = Array::new();

/// LoadBalancer addresses this node announces, per external interface,
/// with the MAC to answer ARP requests with; written by the agent for the
/// addresses whose announcer it is.
#[btf_map]
pub static ANNOUNCE_V4: HashMap<AnnounceKeyV4, AnnounceValue, { MAX_ANNOUNCE as usize }> =
    HashMap::new();

/// Every LoadBalancer address from the pools, with its pool and announcing
/// node: for `xdplb services`, as `SVC_NAMES` is; the program never reads it.
#[btf_map]
pub static LB_ADDRS_V4: HashMap<u32, LbAddrInfo, { MAX_ANNOUNCE as usize }> = HashMap::new();

/// `ANNOUNCE_V4` for IPv6 addresses, with the MAC to answer Neighbour
/// Solicitations with.
#[btf_map]
pub static ANNOUNCE_V6: HashMap<AnnounceKeyV6, AnnounceValue, { MAX_ANNOUNCE as usize }> =
    HashMap::new();

/// `LB_ADDRS_V4` for IPv6 addresses.
#[btf_map]
pub static LB_ADDRS_V6: HashMap<[u32; 4], LbAddrInfo, { MAX_ANNOUNCE as usize }> = HashMap::new();
