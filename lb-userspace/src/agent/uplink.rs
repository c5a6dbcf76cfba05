//! Which hook serves an external interface's traffic.
//!
//! XDP pays where it runs before any skb exists, in a NIC's driver, and
//! where a translated frame can leave as an XDP frame. A veth is neither,
//! unless its peer runs an XDP program in native mode: then the veth takes
//! XDP frames (the peer's NAPI ring receives them). On any other veth,
//! native XDP switches the device to NAPI, converts every skb into an XDP
//! buffer (copying it when it lacks 256 bytes of headroom, as forwarded
//! packets do), and gives the kernel a new skb for every frame it passes:
//! pure cost, paid by all traffic on the link, Service or not. There the
//! same packet path runs at tc ingress (`lb_tc`) instead.
//!
//! The peer is read with one RTM_GETLINK for the veth (its peer's ifindex
//! and network namespace id) and one for the peer in that namespace
//! (IFLA_TARGET_NETNSID, Linux 4.20), whose IFLA_XDP tells what runs there.
//! Hand-written on libc like `netlink.rs`: two requests and three
//! attributes do not justify an rtnetlink crate and its connection task.
use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use anyhow::{bail, Context, Result};

use crate::datapath::XdpMode;

/// How the load balancer meets an external interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// XDP `lb`, with `lb_ext` behind it at tc. `redirect`: the interface
    /// takes XDP frames, so a translated frame leaves it without an skb.
    Xdp { redirect: bool },
    /// `lb_tc` at tc ingress, delivering with skb redirects.
    Tc,
}

/// The hook for `ifname`, and why, for the log. An explicit `--xdp-mode`
/// keeps XDP wherever it is asked for.
pub fn choose(ifname: &str, ifindex: u32, mode: XdpMode) -> (Hook, String) {
    let physical = std::path::Path::new("/sys/class/net")
        .join(ifname)
        .join("device")
        .exists();
    if physical {
        return (
            Hook::Xdp { redirect: true },
            "a device with a driver".into(),
        );
    }
    let veth = match link(ifindex, None) {
        Ok(l) if l.kind.as_deref() == Some("veth") => l,
        Ok(_) => return (Hook::Xdp { redirect: false }, "a virtual device".into()),
        Err(e) => return (Hook::Xdp { redirect: false }, format!("unreadable ({e:#})")),
    };
    let peer = veth.peer.map(|p| (p, link(p, veth.peer_netnsid)));
    match peer {
        Some((_, Ok(peer))) if peer.native_xdp => (
            Hook::Xdp { redirect: true },
            "a veth whose peer runs XDP".into(),
        ),
        _ if mode != XdpMode::Auto => (
            Hook::Xdp { redirect: false },
            format!("a veth whose peer takes no XDP frames; --xdp-mode {mode:?} asked for XDP"),
        ),
        Some((_, Err(e))) => (Hook::Tc, format!("a veth whose peer is unreadable ({e:#})")),
        _ => (Hook::Tc, "a veth whose peer takes no XDP frames".into()),
    }
}

/// What RTM_GETLINK tells about one link.
#[derive(Debug, Default, PartialEq, Eq)]
struct Link {
    /// IFLA_INFO_KIND: "veth", "bridge", ...; none for a physical device.
    kind: Option<String>,
    /// IFLA_LINK: a veth's peer.
    peer: Option<u32>,
    /// IFLA_LINK_NETNSID: the peer's namespace, when it is another one.
    peer_netnsid: Option<i32>,
    /// An XDP program in driver mode, alone or beside others.
    native_xdp: bool,
}

const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const NLMSG_HDRLEN: usize = 16;
/// `struct ifinfomsg`.
const IFINFO_LEN: usize = 16;
const IFLA_LINK: u16 = 5;
const IFLA_LINKINFO: u16 = 18;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_LINK_NETNSID: u16 = 37;
const IFLA_XDP: u16 = 43;
const IFLA_TARGET_NETNSID: u16 = 46;
const IFLA_XDP_ATTACHED: u16 = 2;
const IFLA_XDP_DRV_PROG_ID: u16 = 5;
const XDP_ATTACHED_DRV: u8 = 1;
const NLA_TYPE_MASK: u16 = 0x3fff;

fn link(ifindex: u32, netnsid: Option<i32>) -> Result<Link> {
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error()).context("opening a netlink socket");
    }
    // SAFETY: a descriptor just returned by socket(2), owned by no one else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let request = request(ifindex, netnsid);
    let sent = unsafe { libc::send(fd.as_raw_fd(), request.as_ptr().cast(), request.len(), 0) };
    if sent < 0 {
        return Err(io::Error::last_os_error()).context("sending RTM_GETLINK");
    }
    let mut buf = vec![0u8; 32 * 1024];
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error()).context("reading RTM_GETLINK's answer");
    }
    parse_answer(&buf[..n as usize])
}

fn request(ifindex: u32, netnsid: Option<i32>) -> Vec<u8> {
    let mut msg = vec![0u8; NLMSG_HDRLEN + IFINFO_LEN];
    msg[4..6].copy_from_slice(&RTM_GETLINK.to_ne_bytes());
    msg[6..8].copy_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    msg[8..12].copy_from_slice(&1u32.to_ne_bytes());
    // ifinfomsg: family AF_UNSPEC, then the index at offset 4.
    msg[NLMSG_HDRLEN + 4..NLMSG_HDRLEN + 8].copy_from_slice(&(ifindex as i32).to_ne_bytes());
    if let Some(id) = netnsid {
        msg.extend_from_slice(&8u16.to_ne_bytes());
        msg.extend_from_slice(&IFLA_TARGET_NETNSID.to_ne_bytes());
        msg.extend_from_slice(&id.to_ne_bytes());
    }
    let len = msg.len() as u32;
    msg[0..4].copy_from_slice(&len.to_ne_bytes());
    msg
}

fn parse_answer(buf: &[u8]) -> Result<Link> {
    if buf.len() < NLMSG_HDRLEN {
        bail!("a short netlink answer ({} bytes)", buf.len());
    }
    let len = (u32::from_ne_bytes(buf[0..4].try_into()?) as usize).min(buf.len());
    match u16::from_ne_bytes(buf[4..6].try_into()?) {
        RTM_NEWLINK if len >= NLMSG_HDRLEN + IFINFO_LEN => {
            Ok(parse_link(&buf[NLMSG_HDRLEN + IFINFO_LEN..len]))
        }
        NLMSG_ERROR if len >= NLMSG_HDRLEN + 4 => {
            let errno = -i32::from_ne_bytes(buf[NLMSG_HDRLEN..NLMSG_HDRLEN + 4].try_into()?);
            Err(io::Error::from_raw_os_error(errno)).context("RTM_GETLINK")
        }
        other => bail!("an unexpected netlink answer (type {other}, {len} bytes)"),
    }
}

/// The attributes (type, payload) of `buf`, each padded to 4 bytes.
fn attrs(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if buf.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([buf[0], buf[1]]) as usize;
        let kind = u16::from_ne_bytes([buf[2], buf[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > buf.len() {
            return None;
        }
        let payload = &buf[4..len];
        buf = &buf[((len + 3) & !3).min(buf.len())..];
        Some((kind, payload))
    })
}

fn parse_link(buf: &[u8]) -> Link {
    let u32_of = |p: &[u8]| {
        p.get(..4)
            .map(|b| u32::from_ne_bytes(b.try_into().unwrap()))
    };
    let mut link = Link::default();
    for (kind, payload) in attrs(buf) {
        match kind {
            IFLA_LINK => link.peer = u32_of(payload).filter(|&i| i != 0),
            IFLA_LINK_NETNSID => link.peer_netnsid = u32_of(payload).map(|i| i as i32),
            IFLA_LINKINFO => {
                link.kind = attrs(payload)
                    .find(|(k, _)| *k == IFLA_INFO_KIND)
                    .map(|(_, p)| String::from_utf8_lossy(p).trim_end_matches('\0').to_owned());
            }
            IFLA_XDP => {
                let mut attached = 0;
                let mut drv_prog = false;
                for (k, p) in attrs(payload) {
                    match k {
                        IFLA_XDP_ATTACHED => attached = p.first().copied().unwrap_or(0),
                        IFLA_XDP_DRV_PROG_ID => drv_prog = u32_of(p).is_some_and(|id| id != 0),
                        _ => {}
                    }
                }
                link.native_xdp = attached == XDP_ATTACHED_DRV || drv_prog;
            }
            _ => {}
        }
    }
    link
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(kind: u16, payload: &[u8]) -> Vec<u8> {
        let mut a = ((4 + payload.len()) as u16).to_ne_bytes().to_vec();
        a.extend_from_slice(&kind.to_ne_bytes());
        a.extend_from_slice(payload);
        a.resize((a.len() + 3) & !3, 0);
        a
    }

    #[test]
    fn a_veth_answer_names_its_peer_and_what_xdp_runs() {
        let mut buf = attr(IFLA_LINK, &7u32.to_ne_bytes());
        buf.extend(attr(IFLA_LINK_NETNSID, &3u32.to_ne_bytes()));
        buf.extend(attr(IFLA_LINKINFO, &attr(IFLA_INFO_KIND, b"veth\0")));
        buf.extend(attr(
            IFLA_XDP,
            &attr(IFLA_XDP_ATTACHED, &[XDP_ATTACHED_DRV]),
        ));
        assert_eq!(
            parse_link(&buf),
            Link {
                kind: Some("veth".into()),
                peer: Some(7),
                peer_netnsid: Some(3),
                native_xdp: true,
            }
        );
        let generic = attr(IFLA_XDP, &attr(IFLA_XDP_ATTACHED, &[2]));
        assert!(
            !parse_link(&generic).native_xdp,
            "generic XDP takes no frames"
        );
        let mut multi = attr(IFLA_XDP_ATTACHED, &[4]);
        multi.extend(attr(IFLA_XDP_DRV_PROG_ID, &9u32.to_ne_bytes()));
        assert!(parse_link(&attr(IFLA_XDP, &multi)).native_xdp);
    }

    #[test]
    fn the_loopback_answers_as_a_link_without_a_kind_or_peer() {
        let lo = link(1, None).expect("RTM_GETLINK for ifindex 1");
        assert_eq!(lo.kind, None);
        assert_eq!(lo.peer, None);
        assert!(!lo.native_xdp);
    }

    #[test]
    fn a_missing_link_is_an_error() {
        let err = link(u32::MAX >> 1, None).unwrap_err();
        assert!(format!("{err:#}").contains("No such device"), "{err:#}");
    }
}
