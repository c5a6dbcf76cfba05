//! This node's link and IPv4 address changes, from rtnetlink's multicast
//! groups: a new pod interface gets the program, and a new or removed node
//! address its NodePorts, when the kernel announces it rather than at the
//! next poll. Only the kind of change is read, then the agent rescans what
//! it needs. Written on libc (a socket, a bind, a receive loop) because the
//! rtnetlink crates bring message parsers and a connection task for
//! requests that this never makes.
use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use anyhow::{Context, Result};
use tokio::io::unix::AsyncFd;

/// Multicast groups of rtnetlink (linux/rtnetlink.h).
const RTMGRP_LINK: u32 = 0x1;
const RTMGRP_IPV4_IFADDR: u32 = 0x10;
/// Message types (linux/rtnetlink.h).
const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
/// `struct nlmsghdr`: length (u32), type (u16), flags, sequence, port id.
const NLMSG_HDRLEN: usize = 16;

/// What kinds of change a batch of messages announced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Changed {
    /// An interface appeared, went or changed.
    pub links: bool,
    /// An IPv4 address was added or removed.
    pub addrs: bool,
}

impl Changed {
    const ALL: Self = Self {
        links: true,
        addrs: true,
    };

    fn any(self) -> bool {
        self.links || self.addrs
    }

    fn merge(&mut self, other: Self) {
        self.links |= other.links;
        self.addrs |= other.addrs;
    }
}

/// A subscription to the node's link and address changes.
pub struct Changes {
    fd: AsyncFd<OwnedFd>,
    buf: Vec<u8>,
}

impl Changes {
    pub fn subscribe() -> Result<Self> {
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error()).context("opening a netlink socket");
        }
        // SAFETY: a descriptor just returned by socket(2), owned by no one else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        addr.nl_groups = RTMGRP_LINK | RTMGRP_IPV4_IFADDR;
        let bound = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const addr).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if bound != 0 {
            return Err(io::Error::last_os_error())
                .context("subscribing to link and address changes");
        }
        // SAFETY: the OwnedFd keeps this one descriptor open for as long as
        // the AsyncFd holds it.
        let fd = unsafe { AsyncFd::register(fd) }.map_err(io::Error::from)?;
        Ok(Self {
            fd,
            buf: vec![0; 64 * 1024],
        })
    }

    /// Waits for changes and returns all that have arrived since.
    pub async fn next(&mut self) -> Result<Changed> {
        loop {
            let mut guard = self.fd.readable().await?;
            let mut changed = Changed::default();
            loop {
                let n = unsafe {
                    libc::recv(
                        guard.get_inner().as_raw_fd(),
                        self.buf.as_mut_ptr().cast(),
                        self.buf.len(),
                        0,
                    )
                };
                if n >= 0 {
                    changed.merge(kinds(&self.buf[..n as usize]));
                    continue;
                }
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EAGAIN) => break,
                    Some(libc::EINTR) => continue,
                    // The kernel dropped messages for us: anything may have changed.
                    Some(libc::ENOBUFS) => changed.merge(Changed::ALL),
                    _ => return Err(e).context("reading link and address changes"),
                }
            }
            guard.clear_ready();
            if changed.any() {
                return Ok(changed);
            }
        }
    }
}

/// The kinds of change among the netlink messages of one datagram.
fn kinds(mut buf: &[u8]) -> Changed {
    let mut changed = Changed::default();
    while buf.len() >= NLMSG_HDRLEN {
        let len = u32::from_ne_bytes(buf[0..4].try_into().expect("4 bytes")) as usize;
        match u16::from_ne_bytes(buf[4..6].try_into().expect("2 bytes")) {
            RTM_NEWLINK | RTM_DELLINK => changed.links = true,
            RTM_NEWADDR | RTM_DELADDR => changed.addrs = true,
            _ => {}
        }
        // Messages are padded to 4 bytes (NLMSG_ALIGN).
        let next = (len + 3) & !3;
        if len < NLMSG_HDRLEN || next > buf.len() {
            break;
        }
        buf = &buf[next..];
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(kind: u16, payload: usize) -> Vec<u8> {
        let len = NLMSG_HDRLEN + payload;
        let mut m = (len as u32).to_ne_bytes().to_vec();
        m.extend(kind.to_ne_bytes());
        m.resize((len + 3) & !3, 0);
        m
    }

    #[test]
    fn reads_the_kind_of_every_message_in_a_datagram() {
        let links = [message(RTM_NEWLINK, 17), message(RTM_DELLINK, 4)].concat();
        let expect = |links, addrs| Changed { links, addrs };
        assert_eq!(kinds(&links), expect(true, false));
        let addrs = [message(3, 0), message(RTM_DELADDR, 9)].concat();
        assert_eq!(kinds(&addrs), expect(false, true));
        assert_eq!(kinds(&[links, addrs].concat()), expect(true, true));
        // Routes and neighbours are none of our business.
        assert_eq!(kinds(&message(24, 12)), Changed::default());
    }

    #[test]
    fn a_truncated_or_malformed_datagram_ends_the_walk() {
        let mut m = [message(RTM_NEWADDR, 8), message(RTM_NEWLINK, 8)].concat();
        m.truncate(NLMSG_HDRLEN + 8 + 10);
        assert_eq!(
            kinds(&m),
            Changed {
                links: false,
                addrs: true
            }
        );
        let mut zero_length = message(RTM_NEWADDR, 0);
        zero_length[..4].copy_from_slice(&0u32.to_ne_bytes());
        assert!(kinds(&[zero_length, message(RTM_NEWLINK, 0)].concat()).addrs);
        assert!(kinds(&[0u8; 7]) == Changed::default());
    }
}
