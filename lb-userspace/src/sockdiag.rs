//! The node's own UDP sockets, IPv4 and IPv6, connected to a backend that
//! is gone. The socket hooks point a connected UDP socket at its backend
//! once, at connect; nothing re-balances it afterwards, so a client that
//! never reconnects (a resolver's long-lived socket, say) would send into
//! the void for as long as it runs. Closing it with sock_diag's
//! SOCK_DESTROY, as `ss -K` does, hands the application an ECONNABORTED on
//! its next call, and its reconnect gets a live backend. Pods' IPv4 UDP is
//! left to the per-packet path by the hooks (see lb-ebpf's sock.rs), whose
//! flows of a removed backend are forgotten (`sync::stale`). Pods' IPv6 UDP
//! is translated at the socket, there being no IPv6 per-packet path yet;
//! their sockets live in the pods' namespaces, which this agent (without
//! CAP_SYS_ADMIN) cannot enter, so they are not closed.
//!
//! Written on libc: two fixed-size requests and one reply layout. The
//! sock_diag crate gives every request the dump's message type, and
//! SOCK_DESTROY needs its own.
use std::{
    collections::HashSet,
    io,
    mem::size_of,
    net::IpAddr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use anyhow::{Context, Result};
use lb_common::addr::{to_map, to_map_v6};

/// linux/sock_diag.h, linux/inet_diag.h, linux/netlink.h.
const NETLINK_SOCK_DIAG: i32 = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
/// The kernel's TCP_ESTABLISHED, which a connected UDP socket reports.
const STATE_CONNECTED: u8 = 1;

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct NlMsgHdr {
    len: u32,
    kind: u16,
    flags: u16,
    seq: u32,
    pid: u32,
}

/// `struct inet_diag_sockid`: ports and addresses in network order.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct SockId {
    sport: u16,
    dport: u16,
    src: [u32; 4],
    dst: [u32; 4],
    ifindex: u32,
    cookie: [u32; 2],
}

/// `struct inet_diag_req_v2`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Request {
    family: u8,
    protocol: u8,
    ext: u8,
    pad: u8,
    states: u32,
    id: SockId,
}

/// The head of `struct inet_diag_msg`, as far as it is read.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Reply {
    family: u8,
    state: u8,
    timer: u8,
    retrans: u8,
    id: SockId,
}

#[repr(C)]
struct Message {
    hdr: NlMsgHdr,
    req: Request,
}

fn udp_request(family: i32, id: SockId) -> Request {
    Request {
        family: family as u8,
        protocol: libc::IPPROTO_UDP as u8,
        states: u32::MAX,
        id,
        ..Request::default()
    }
}

struct DiagSocket(OwnedFd);

impl DiagSocket {
    fn open() -> io::Result<Self> {
        // SAFETY: plain socket(2); the descriptor is owned at once.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                NETLINK_SOCK_DIAG,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor nothing else owns.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn send(&self, kind: u16, flags: u16, req: Request) -> io::Result<()> {
        let msg = Message {
            hdr: NlMsgHdr {
                len: size_of::<Message>() as u32,
                kind,
                flags: NLM_F_REQUEST | flags,
                ..NlMsgHdr::default()
            },
            req,
        };
        // SAFETY: sends the bytes of a repr(C) value without padding.
        let n = unsafe {
            libc::send(
                self.0.as_raw_fd(),
                (&msg as *const Message).cast(),
                size_of::<Message>(),
                0,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Reads replies until the dump's end or an acknowledgement, handing
    /// each socket to `each`; returns the acknowledged error, if any.
    fn receive(&self, mut each: impl FnMut(&Reply)) -> io::Result<()> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            // SAFETY: receives into a buffer of the length given.
            let n =
                unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            let mut rest = &buf[..n as usize];
            while rest.len() >= size_of::<NlMsgHdr>() {
                // SAFETY: at least a header's bytes; read unaligned.
                let hdr: NlMsgHdr = unsafe { std::ptr::read_unaligned(rest.as_ptr().cast()) };
                let len = (hdr.len as usize).min(rest.len());
                let body = &rest[size_of::<NlMsgHdr>()..len];
                match hdr.kind {
                    NLMSG_DONE => return Ok(()),
                    NLMSG_ERROR => {
                        let code = body
                            .get(..4)
                            .map(|b| i32::from_ne_bytes(b.try_into().expect("4 bytes")))
                            .unwrap_or(0);
                        return match code {
                            0 => Ok(()),
                            e => Err(io::Error::from_raw_os_error(-e)),
                        };
                    }
                    SOCK_DIAG_BY_FAMILY if body.len() >= size_of::<Reply>() => {
                        // SAFETY: at least a reply's bytes; read unaligned.
                        each(&unsafe { std::ptr::read_unaligned(body.as_ptr().cast()) });
                    }
                    _ => {}
                }
                // Messages are padded to 4 bytes.
                let step = (len + 3) & !3;
                rest = rest.get(step..).unwrap_or_default();
            }
        }
    }
}

/// Closes the UDP sockets of this network namespace that are connected to
/// one of `backends`; returns how many. IPv6 sockets connected to an IPv4
/// backend by its mapped address (`::ffff:a.b.c.d`) count too.
pub fn close_udp_connected_to(backends: &[(IpAddr, u16)]) -> Result<usize> {
    let mut gone_v4 = HashSet::new();
    let mut gone_v6 = HashSet::new();
    for &(addr, port) in backends {
        let port = port.to_be();
        match addr {
            IpAddr::V4(a) => {
                // `inet_diag_sockid` holds an IPv4 address in its first
                // word, zeros after it.
                gone_v4.insert(([to_map(a), 0, 0, 0], port));
                gone_v6.insert((to_map_v6(a.to_ipv6_mapped()), port));
            }
            IpAddr::V6(a) => {
                gone_v6.insert((to_map_v6(a), port));
            }
        }
    }
    let mut closed = 0;
    for (family, gone) in [(libc::AF_INET, gone_v4), (libc::AF_INET6, gone_v6)] {
        if !gone.is_empty() {
            closed += close_family(family, &gone)?;
        }
    }
    Ok(closed)
}

fn close_family(family: i32, gone: &HashSet<([u32; 4], u16)>) -> Result<usize> {
    let diag = DiagSocket::open().context("opening a sock_diag socket")?;
    diag.send(
        SOCK_DIAG_BY_FAMILY,
        NLM_F_DUMP,
        udp_request(family, SockId::default()),
    )
    .context("asking for the UDP sockets")?;
    let mut doomed = Vec::new();
    diag.receive(|r| {
        if r.state == STATE_CONNECTED && gone.contains(&(r.id.dst, r.id.dport)) {
            doomed.push(r.id);
        }
    })
    .context("reading the UDP sockets")?;
    let mut closed = 0;
    for id in doomed {
        diag.send(SOCK_DESTROY, NLM_F_ACK, udp_request(family, id))
            .context("closing a UDP socket")?;
        match diag.receive(|_| {}) {
            Ok(()) => closed += 1,
            // Closed by its owner meanwhile.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(e).context("closing a UDP socket (SOCK_DESTROY)"),
        }
    }
    Ok(closed)
}

/// The cookie of this thread's network namespace (`SO_NETNS_COOKIE`, 5.14).
pub fn netns_cookie() -> io::Result<u64> {
    // SAFETY: plain socket(2); the descriptor is owned at once.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut cookie = 0u64;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt(2) into a u64 of the length given.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}
