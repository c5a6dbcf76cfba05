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
//! UDP sockets of pods are left to the per-packet path (see `to_backend`).
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
//! ones; and copies of `SOCK_REVNAT_V4` values, valid until the program
//! returns.
use core::ptr::{read_volatile, write_volatile};

use aya_ebpf::{
    helpers::generated::{bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_set_retval},
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
    EbpfContext,
};
use lb_common::{
    decide::{self, Client, Decision},
    sock::{socket_hash_v4, SockRevNatKeyV4, SockRevNatValueV4},
    BackendV4, FrontendKeyV4, Reason, PROTO_TCP, PROTO_UDP,
};

use crate::{
    conntrack,
    maps::{FRONTENDS_V4, SOCK_REVNAT_V4},
    monitor, select, stats,
};

/// Verdicts of a cgroup sock_addr program.
const ALLOW: i32 = 1;
const DENY: i32 = 0;

const AF_INET: u32 = 2;
const ECONNREFUSED: i32 = 111;
const EHOSTUNREACH: i32 = 113;

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

// Context fields are read and written through volatile whole-word accesses:
// the verifier refuses the narrower loads the compiler would pick for
// `protocol`, and rewrites each access to the socket address it stands for.

#[inline(always)]
fn to_backend(ctx: &SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    let (family, proto, addr, port) = unsafe {
        (
            read_volatile(&raw const (*sa).user_family),
            read_volatile(&raw const (*sa).protocol),
            read_volatile(&raw const (*sa).user_ip4),
            read_volatile(&raw const (*sa).user_port) as u16,
        )
    };
    if family != AF_INET || (proto != PROTO_TCP as u32 && proto != PROTO_UDP as u32) {
        return ALLOW;
    }
    let fe_key = FrontendKeyV4 {
        addr,
        port,
        proto: proto as u8,
        _pad: 0,
    };
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    // A connected UDP socket would keep its backend after the backend is
    // gone, and nothing can close it in a pod's namespace from here; the
    // per-packet path re-balances the pod's next datagram instead.
    let host = conntrack::config().host_netns_cookie;
    if proto == PROTO_UDP as u32 && host != 0 && netns != host {
        if FRONTENDS_V4.get_ptr(fe_key).is_some() {
            stats::count(Reason::SockUdpLeftToPath);
        }
        return ALLOW;
    }
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // Processes on the node and in pods are in-cluster clients.
    let decision = decide::new_flow(
        &select::Maps,
        &fe_key,
        0,
        true,
        &Client::Netns(netns),
        conntrack::now(),
        || socket_hash_v4(cookie, addr, port, fe_key.proto),
    );
    let (fe, be) = match decision {
        Decision::Backend { fe, backend, .. } => (fe, backend),
        Decision::NotOurs => return ALLOW,
        Decision::Refused(Reason::DropNoLocalBackend) => return refuse(&fe_key, EHOSTUNREACH),
        Decision::Refused(_) => return refuse(&fe_key, ECONNREFUSED),
    };
    unsafe {
        write_volatile(&raw mut (*sa).user_ip4, be.addr);
        write_volatile(&raw mut (*sa).user_port, be.port as u32);
    }
    // A connection or datagram is the socket path's packet; its size is not
    // known here.
    stats::count(Reason::SockTranslated);
    monitor::socket(&fe_key, Some((fe.svc_id, &be)));
    stats::count_service(fe.svc_id, 0);
    remember(cookie, &be, &fe_key);
    ALLOW
}

#[inline(always)]
fn refuse(fe_key: &FrontendKeyV4, errno: i32) -> i32 {
    stats::count(Reason::SockRefused);
    monitor::socket(fe_key, None);
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
