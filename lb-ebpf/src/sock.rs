//! Socket-level translation for the processes whose packets XDP never sees:
//! those in the node's own network namespace (hostNetwork pods, node
//! agents), which send straight out of the node. Attached to a cgroup, the
//! programs act on every socket its processes open, in any namespace.
//!
//! `connect4` (TCP, connected UDP) and `sendmsg4` (unconnected UDP) swap a
//! frontend for a backend chosen as the packet path chooses (same maps, ring
//! and ClientIP affinity, `lb_common::decide`), so the kernel routes to the
//! backend itself and no packet needs translating. `recvmsg4` restores the
//! frontend as the source of UDP replies, which the application would
//! otherwise take for a stranger's, and `getpeername4` as the peer of a
//! connected socket, which under kube-proxy's NAT also reads as the
//! frontend.
//!
//! `connect6`, `sendmsg6`, `recvmsg6` and `getpeername6` do the same for
//! IPv6 ClusterIPs (`FRONTENDS_V6`, `BACKENDS_V6`, `SOCK_REVNAT_V6`), with
//! the same decision. An IPv4-mapped address (`::ffff:a.b.c.d`, what a
//! dual-stack socket gives for an IPv4 peer) is the IPv4 frontend's: it is
//! decided on the IPv4 maps and answered as mapped, since the IPv4 hooks
//! never see such a socket.
//!
//! A loopback address stands for the node's NodePorts, which the maps hold
//! at 127.0.0.1, for the node's own processes only (`frontend_v4`).
//!
//! UDP sockets of pods are left to the per-packet path (see `choose`);
//! IPv6 ones when the agent says that path can take them
//! (`ConfigV6::pods_udp_per_packet`).
//!
//! A frontend without backends fails the call at once. A denying program
//! alone makes that EPERM, which no client expects from a network call, so
//! `bpf_set_retval` replaces it: ECONNREFUSED, what kube-proxy's reject gives
//! the client; or, where the packet path drops (`FE_DROP_EMPTY`, traffic
//! policy Local without local backends), EHOSTUNREACH, as Cilium's socket
//! balancer answers, rather than leave the client to its connect timeout.
//!
//! Unsafe in this module: helpers on the hook's own context pointer;
//! accesses to the `bpf_sock_addr` fields the verifier lets cgroup
//! `sock_addr` programs read and write, each one whole-word volatile access
//! because the verifier rewrites every context access and refuses narrower
//! ones; copies of `SOCK_REVNAT_V4` and `SOCK_REVNAT_V6` values, and the
//! read of a `CONFIG_V6` field, valid until the program returns.
use core::ptr::{read_volatile, write_volatile};

use aya_ebpf::{
    bindings::bpf_sock_addr,
    helpers::generated::{bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_set_retval},
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
    EbpfContext,
};
use lb_common::{
    addr,
    decide::{self, Client, Decision, View},
    sock::{
        socket_hash_v4, socket_hash_v6, SockRevNatKeyV4, SockRevNatKeyV6, SockRevNatValueV4,
        SockRevNatValueV6,
    },
    BackendV4, BackendV6, FrontendKeyV4, FrontendKeyV6, FrontendValue, Reason, PROTO_TCP,
    PROTO_UDP,
};

use crate::{
    conntrack,
    maps::{CONFIG_V6, SOCK_REVNAT_V4, SOCK_REVNAT_V6},
    monitor,
    select::{Maps, MapsV6},
    stats,
};

/// Verdicts of a cgroup sock_addr program.
const ALLOW: i32 = 1;
const DENY: i32 = 0;

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;
const ECONNREFUSED: i32 = 111;
const EHOSTUNREACH: i32 = 113;

/// The first three words of an IPv4-mapped IPv6 address, in network order.
const V4_MAPPED: [u32; 3] = [0, 0, u32::from_be(0xffff)];

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    to_backend(&ctx)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn sendmsg4(ctx: SockAddrContext) -> i32 {
    to_backend(&ctx)
}

#[cgroup_sock_addr(recvmsg4)]
pub fn recvmsg4(ctx: SockAddrContext) -> i32 {
    from_backend(&ctx);
    // The only verdict the kernel accepts from this hook.
    ALLOW
}

#[cgroup_sock_addr(getpeername4)]
pub fn getpeername4(ctx: SockAddrContext) -> i32 {
    from_backend(&ctx);
    // As for recvmsg4.
    ALLOW
}

#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    to_backend6(&ctx)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn sendmsg6(ctx: SockAddrContext) -> i32 {
    to_backend6(&ctx)
}

#[cgroup_sock_addr(recvmsg6)]
pub fn recvmsg6(ctx: SockAddrContext) -> i32 {
    from_backend6(&ctx);
    // As for recvmsg4.
    ALLOW
}

#[cgroup_sock_addr(getpeername6)]
pub fn getpeername6(ctx: SockAddrContext) -> i32 {
    from_backend6(&ctx);
    // As for recvmsg4.
    ALLOW
}

/// What the hooks need of one family's maps beyond the decision.
trait Family: View {
    /// Whether the family has a per-packet path that pods' UDP is left to.
    fn per_packet_path() -> bool;
    fn hash(cookie: u64, key: &Self::Key) -> u32;
    /// The `xdplb monitor` event of a decision on `key`.
    fn event(key: &Self::Key, to: Option<(u32, &Self::Backend)>);
}

impl Family for Maps {
    #[inline(always)]
    fn per_packet_path() -> bool {
        true
    }
    #[inline(always)]
    fn hash(cookie: u64, key: &FrontendKeyV4) -> u32 {
        socket_hash_v4(cookie, key.addr, key.port, key.proto)
    }

    #[inline(always)]
    fn event(key: &FrontendKeyV4, to: Option<(u32, &BackendV4)>) {
        monitor::socket(key, to.map(|(id, be)| (id, (be.addr, be.port))));
    }
}

impl Family for MapsV6 {
    /// Only when the IPv6 path is loaded and can source-NAT a pod that
    /// reaches itself through its Service; otherwise a pod's IPv6 UDP
    /// socket is translated here, and a connected one keeps its backend
    /// until it reconnects, as the node's would without the agent closing
    /// it.
    #[inline(always)]
    fn per_packet_path() -> bool {
        CONFIG_V6
            .get_ptr(0)
            .is_some_and(|c| unsafe { (*c).pods_udp_per_packet } != 0)
    }
    #[inline(always)]
    fn hash(cookie: u64, key: &FrontendKeyV6) -> u32 {
        socket_hash_v6(cookie, key.addr, key.port, key.proto)
    }

    #[inline(always)]
    fn event(key: &FrontendKeyV6, to: Option<(u32, &BackendV6)>) {
        monitor::socket(key, to.map(|(id, be)| (id, (be.addr, be.port))));
    }
}

// Context fields are read and written through volatile whole-word accesses:
// the verifier refuses the narrower loads the compiler would pick for
// `protocol`, and rewrites each access to the socket address it stands for.

/// (family, protocol, port) of the address a socket connects or sends to.
#[inline(always)]
fn target(sa: *mut bpf_sock_addr) -> (u32, u32, u16) {
    unsafe {
        (
            read_volatile(&raw const (*sa).user_family),
            read_volatile(&raw const (*sa).protocol),
            read_volatile(&raw const (*sa).user_port) as u16,
        )
    }
}

#[inline(always)]
fn read_ip6(sa: *mut bpf_sock_addr) -> [u32; 4] {
    unsafe {
        [
            read_volatile(&raw const (*sa).user_ip6[0]),
            read_volatile(&raw const (*sa).user_ip6[1]),
            read_volatile(&raw const (*sa).user_ip6[2]),
            read_volatile(&raw const (*sa).user_ip6[3]),
        ]
    }
}

#[inline(always)]
fn write_ip6(sa: *mut bpf_sock_addr, addr: [u32; 4], port: u16) {
    unsafe {
        write_volatile(&raw mut (*sa).user_ip6[0], addr[0]);
        write_volatile(&raw mut (*sa).user_ip6[1], addr[1]);
        write_volatile(&raw mut (*sa).user_ip6[2], addr[2]);
        write_volatile(&raw mut (*sa).user_ip6[3], addr[3]);
        write_volatile(&raw mut (*sa).user_port, port as u32);
    }
}

/// The IPv4 address an IPv4-mapped IPv6 address maps.
#[inline(always)]
fn v4_mapped(addr: [u32; 4]) -> Option<u32> {
    (addr[0] == V4_MAPPED[0] && addr[1] == V4_MAPPED[1] && addr[2] == V4_MAPPED[2])
        .then_some(addr[3])
}

#[inline(always)]
fn is_l4(proto: u32) -> bool {
    proto == PROTO_TCP as u32 || proto == PROTO_UDP as u32
}

#[inline(always)]
fn to_backend(ctx: &SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    let (family, proto, port) = target(sa);
    if family != AF_INET || !is_l4(proto) {
        return ALLOW;
    }
    let asked = FrontendKeyV4 {
        addr: unsafe { read_volatile(&raw const (*sa).user_ip4) },
        port,
        proto: proto as u8,
        _pad: 0,
    };
    let caller = Caller::of(ctx);
    let Some(fe_key) = frontend_v4(&caller, asked) else {
        return ALLOW;
    };
    match choose(ctx, &caller, &Maps, &fe_key) {
        Ok((be, cookie)) => {
            unsafe {
                write_volatile(&raw mut (*sa).user_ip4, be.addr);
                write_volatile(&raw mut (*sa).user_port, be.port as u32);
            }
            remember(cookie, &be, &asked);
            ALLOW
        }
        Err(verdict) => verdict,
    }
}

/// The network namespace a socket belongs to, and the node's own (0 while
/// the agent has not said), read once per call of a hook.
struct Caller {
    netns: u64,
    host: u64,
}

impl Caller {
    #[inline(always)]
    fn of(ctx: &SockAddrContext) -> Self {
        Self {
            netns: unsafe { bpf_get_netns_cookie(ctx.as_ptr()) },
            host: conntrack::config().host_netns_cookie,
        }
    }

    /// Whether the socket is surely the node's own.
    #[inline(always)]
    fn is_node(&self) -> bool {
        self.host != 0 && self.netns == self.host
    }

    /// Whether the socket is surely a pod's.
    #[inline(always)]
    fn is_pod(&self) -> bool {
        self.host != 0 && self.netns != self.host
    }
}

/// The IPv4 frontend a socket asking for `asked` looks up. A loopback
/// address stands for the node's NodePorts, held at `addr::LOCALHOST`, as
/// kube-proxy serves NodePorts on every local address (localhost
/// included) to the node's own processes; a pod's loopback is its own, left
/// alone.
#[inline(always)]
fn frontend_v4(caller: &Caller, asked: FrontendKeyV4) -> Option<FrontendKeyV4> {
    if !addr::is_loopback(asked.addr) {
        return Some(asked);
    }
    caller.is_node().then_some(FrontendKeyV4 {
        addr: addr::LOCALHOST,
        ..asked
    })
}

#[inline(always)]
fn to_backend6(ctx: &SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    let (family, proto, port) = target(sa);
    if family != AF_INET6 || !is_l4(proto) {
        return ALLOW;
    }
    let addr = read_ip6(sa);
    let caller = Caller::of(ctx);
    if let Some(addr) = v4_mapped(addr) {
        let asked = FrontendKeyV4 {
            addr,
            port,
            proto: proto as u8,
            _pad: 0,
        };
        let Some(fe_key) = frontend_v4(&caller, asked) else {
            return ALLOW;
        };
        return match choose(ctx, &caller, &Maps, &fe_key) {
            Ok((be, cookie)) => {
                write_ip6(
                    sa,
                    [V4_MAPPED[0], V4_MAPPED[1], V4_MAPPED[2], be.addr],
                    be.port,
                );
                remember(cookie, &be, &asked);
                ALLOW
            }
            Err(verdict) => verdict,
        };
    }
    let fe_key = FrontendKeyV6 {
        addr,
        port,
        proto: proto as u8,
        _pad: 0,
    };
    match choose(ctx, &caller, &MapsV6, &fe_key) {
        Ok((be, cookie)) => {
            write_ip6(sa, be.addr, be.port);
            remember6(cookie, &be, &fe_key);
            ALLOW
        }
        Err(verdict) => verdict,
    }
}

/// The backend for a socket towards `fe_key` and the socket's cookie, the
/// translation counted; or the hook's verdict when the socket is not
/// translated.
#[inline(always)]
fn choose<F: Family>(
    ctx: &SockAddrContext,
    caller: &Caller,
    maps: &F,
    fe_key: &F::Key,
) -> Result<(F::Backend, u64), i32> {
    let proto = unsafe { read_volatile(&raw const (*ctx.sock_addr).protocol) };
    // A connected UDP socket would keep its backend after the backend is
    // gone, and nothing can close it in a pod's namespace from here; the
    // per-packet path re-balances the pod's next datagram instead.
    if proto == PROTO_UDP as u32 && caller.is_pod() && F::per_packet_path() {
        if maps.frontend(fe_key).is_some() {
            stats::count(Reason::SockUdpLeftToPath);
        }
        return Err(ALLOW);
    }
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // Processes on the node and in pods are in-cluster clients.
    let decision = decide::new_flow(
        maps,
        fe_key,
        Default::default(),
        true,
        &Client::Netns(caller.netns),
        conntrack::now(),
        || F::hash(cookie, fe_key),
    );
    let (fe, be): (FrontendValue, F::Backend) = match decision {
        Decision::Backend { fe, backend, .. } => (fe, backend),
        Decision::NotOurs => return Err(ALLOW),
        Decision::Refused(Reason::DropNoLocalBackend) => {
            return Err(refuse::<F>(fe_key, EHOSTUNREACH))
        }
        Decision::Refused(_) => return Err(refuse::<F>(fe_key, ECONNREFUSED)),
    };
    // A connection or datagram is the socket path's packet; its size is not
    // known here.
    stats::count(Reason::SockTranslated);
    F::event(fe_key, Some((fe.svc_id, &be)));
    stats::count_service(fe.svc_id, 0);
    Ok((be, cookie))
}

#[inline(always)]
fn refuse<F: Family>(fe_key: &F::Key, errno: i32) -> i32 {
    stats::count(Reason::SockRefused);
    F::event(fe_key, None);
    unsafe { bpf_set_retval(-errno) };
    DENY
}

#[inline(always)]
fn remember(cookie: u64, be: &BackendV4, fe_key: &FrontendKeyV4) {
    let key = SockRevNatKeyV4 {
        cookie,
        backend_addr: be.addr,
        backend_port: be.port,
        _pad: 0,
    };
    let value = SockRevNatValueV4 {
        frontend_addr: fe_key.addr,
        frontend_port: fe_key.port,
        _pad: 0,
    };
    // `sendmsg4` runs for every datagram, and an LRU update costs more than
    // a lookup.
    if SOCK_REVNAT_V4
        .get_ptr(key)
        .is_some_and(|v| unsafe { *v } == value)
    {
        return;
    }
    // Losing this write only costs the replies their frontend source.
    let _ = SOCK_REVNAT_V4.insert(key, value, 0);
}

#[inline(always)]
fn remember6(cookie: u64, be: &BackendV6, fe_key: &FrontendKeyV6) {
    let key = SockRevNatKeyV6 {
        cookie,
        backend_addr: be.addr,
        backend_port: be.port,
        _pad: [0; 3],
    };
    let value = SockRevNatValueV6 {
        frontend_addr: fe_key.addr,
        frontend_port: fe_key.port,
        _pad: 0,
    };
    // As in `remember`.
    if SOCK_REVNAT_V6
        .get_ptr(key)
        .is_some_and(|v| unsafe { *v } == value)
    {
        return;
    }
    let _ = SOCK_REVNAT_V6.insert(key, value, 0);
}

#[inline(always)]
fn from_backend(ctx: &SockAddrContext) {
    let sa = ctx.sock_addr;
    let key = unsafe {
        SockRevNatKeyV4 {
            cookie: bpf_get_socket_cookie(ctx.as_ptr()),
            backend_addr: read_volatile(&raw const (*sa).user_ip4),
            backend_port: read_volatile(&raw const (*sa).user_port) as u16,
            _pad: 0,
        }
    };
    if let Some(fe) = SOCK_REVNAT_V4.get_ptr(key) {
        unsafe {
            let fe = *fe;
            write_volatile(&raw mut (*sa).user_ip4, fe.frontend_addr);
            write_volatile(&raw mut (*sa).user_port, fe.frontend_port as u32);
        }
    }
}

#[inline(always)]
fn from_backend6(ctx: &SockAddrContext) {
    let sa = ctx.sock_addr;
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let addr = read_ip6(sa);
    let port = unsafe { read_volatile(&raw const (*sa).user_port) } as u16;
    if let Some(backend_addr) = v4_mapped(addr) {
        let key = SockRevNatKeyV4 {
            cookie,
            backend_addr,
            backend_port: port,
            _pad: 0,
        };
        if let Some(fe) = SOCK_REVNAT_V4.get_ptr(key) {
            let fe = unsafe { *fe };
            write_ip6(
                sa,
                [V4_MAPPED[0], V4_MAPPED[1], V4_MAPPED[2], fe.frontend_addr],
                fe.frontend_port,
            );
        }
        return;
    }
    let key = SockRevNatKeyV6 {
        cookie,
        backend_addr: addr,
        backend_port: port,
        _pad: [0; 3],
    };
    if let Some(fe) = SOCK_REVNAT_V6.get_ptr(key) {
        let fe = unsafe { *fe };
        write_ip6(sa, fe.frontend_addr, fe.frontend_port);
    }
}
