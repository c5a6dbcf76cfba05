//! A client, a node and two backend pods, each in its own namespace, wired
//! like a Kubernetes node: the client reaches the service range only through
//! the node, and each pod hangs off its own node-side veth. Every pod runs a
//! TCP and a UDP server that answer `<pod name>:` followed by the request, so
//! a reply tells which backend served it and whether every byte survived.
//!
//! The node is configured as a distribution ships one: loose reverse-path
//! filtering (systemd's `rp_filter=2` on `all` and `default`), no
//! `accept_local`, offloads as the kernel creates them, a default route.
//!
//! [`Checksums::Verified`] turns the node's transmit checksum offload off, as
//! a measuring instrument only: local sockets behind a veth send TCP and UDP
//! with CHECKSUM_PARTIAL, the field holding only the pseudo-header sum, and
//! with offload on nobody completes it before the receiver, which trusts it
//! unchecked. With offload off the node must complete every forwarded
//! packet's checksum itself (over the addresses the data plane wrote), so
//! the receivers really verify what translation did, and count any mismatch
//! in `InCsumErrors`. The product must not depend on it: real nodes keep it
//! on.

use std::fs;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use lb_common::{IfaceInfo, IFACE_POD};
use lb_userspace::{
    datapath::{attach_tc, Datapath, XdpMode, EXT_PROGRAM, POD_PROGRAM},
    sync::NodeMaps,
};
use testbed::netns::{Ns, Testbed};

use super::servers::ServerThreads;

/// Bound on every connect, read and write, on both ends.
pub const TIMEOUT: Duration = Duration::from_secs(3);
pub const BACKEND_TCP_PORT: u16 = 8080;
pub const BACKEND_UDP_PORT: u16 = 5353;

const CLIENT_ADDR: &str = "192.168.10.2/24";
const NODE_CLIENT_SIDE: &str = "192.168.10.1";
/// The node's routes never cover it: without the data plane nothing reaches it.
const SERVICE_RANGE: &str = "10.96.0.0/16";
/// How often idle servers look at the stop flag.
const POLL: Duration = Duration::from_millis(2);

/// Node-side interfaces; the program goes on all of them, so requests from
/// the client and replies from the pods both pass through it.
const NODE_IFACES: [&str; 3] = ["to-client", "to-b1", "to-b2"];

pub struct Pod {
    pub name: &'static str,
    pub addr: Ipv4Addr,
    pub ns: Ns,
}

/// The client's address, without its prefix length.
fn client_host() -> &'static str {
    CLIENT_ADDR
        .split_once('/')
        .map_or(CLIENT_ADDR, |(host, _)| host)
}

/// Whether the receivers verify the checksums of translated packets.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Checksums {
    /// Offloads on, as on a real node: receivers trust the checksums.
    Trusted,
    /// The node's transmit checksum offload off, so receivers verify them.
    Verified,
}

/// The node's routes beyond its connected networks.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Routes {
    /// A default route towards the client's side, as every real node has
    /// one.
    Default,
    /// None, as an instrument: an untranslated connection to the service
    /// range then fails at once with ENETUNREACH instead of going out to
    /// time out, which tells it from a translated one.
    ConnectedOnly,
}

pub struct Topology {
    // Declared first so it drops first: a server socket would keep its
    // namespace alive after the testbed deletes it.
    servers: Servers,
    pub tb: Testbed,
    pub client: Ns,
    pub node: Ns,
    pub pods: [Pod; 2],
}

impl Topology {
    /// Builds the namespaces with a node as shipped and starts the pods'
    /// servers.
    pub fn build() -> Result<Self> {
        Self::build_with(Checksums::Trusted, Routes::Default)
    }

    /// [`Topology::build`], with the receivers verifying checksums if
    /// `checksums` says so, and the node's `routes`.
    pub fn build_with(checksums: Checksums, routes: Routes) -> Result<Self> {
        super::privileged("netns data-path");
        let tb = Testbed::new()?;
        let client = tb.add_ns("client")?;
        let node = tb.add_ns("node")?;
        tb.sysctl(&node, "net.ipv4.ip_forward", "1")?;
        // Before any link exists, so every interface inherits `default`.
        for conf in ["all", "default"] {
            tb.sysctl(&node, &format!("net.ipv4.conf.{conf}.rp_filter"), "2")?;
        }

        tb.veth(&client, "eth0", &node, NODE_IFACES[0])?;
        tb.addr(&client, "eth0", CLIENT_ADDR)?;
        tb.up(&client, "eth0")?;
        tb.addr(&node, NODE_IFACES[0], &format!("{NODE_CLIENT_SIDE}/24"))?;
        // Only the service range: the client has no way to the pods except
        // through a translated VIP.
        tb.route(&client, &format!("{SERVICE_RANGE} via {NODE_CLIENT_SIDE}"))?;

        let mut servers = Servers::default();
        let mut pod = |name, addr: Ipv4Addr, node_if| -> Result<Pod> {
            let pod = Pod {
                name,
                addr,
                ns: tb.add_ns(name)?,
            };
            let [a, b, c, _] = addr.octets();
            let gateway = Ipv4Addr::new(a, b, c, 1);
            tb.veth(&pod.ns, "eth0", &node, node_if)?;
            tb.addr(&pod.ns, "eth0", &format!("{addr}/24"))?;
            tb.up(&pod.ns, "eth0")?;
            tb.route(&pod.ns, &format!("default via {gateway}"))?;
            tb.addr(&node, node_if, &format!("{gateway}/24"))?;
            servers.start(&tb, &pod)?;
            Ok(pod)
        };
        let pods = [
            pod("b1", Ipv4Addr::new(10, 244, 1, 2), NODE_IFACES[1])?,
            pod("b2", Ipv4Addr::new(10, 244, 2, 2), NODE_IFACES[2])?,
        ];

        for ifname in NODE_IFACES {
            tb.up(&node, ifname)?;
        }
        // Loose reverse-path filtering passes only sources some route leads
        // back to: with no default route, not even replies from a VIP.
        if routes == Routes::Default {
            tb.route(&node, &format!("default via {}", client_host()))?;
        }
        if checksums == Checksums::Verified {
            tb.in_ns(&node, || {
                NODE_IFACES.into_iter().try_for_each(tx_checksum_off)
            })??;
        }

        Ok(Self {
            servers,
            tb,
            client,
            node,
            pods,
        })
    }

    /// Every pod as a backend `(address, port)`.
    pub fn backends(&self, port: u16) -> Vec<(Ipv4Addr, u16)> {
        self.pods.iter().map(|pod| (pod.addr, port)).collect()
    }

    /// Attaches the programs inside the node as the agent does: XDP and
    /// `lb_ext` on the client-facing interface, `lb_pod` on the pods'.
    pub fn attach(&self, dp: &mut Datapath, mode: XdpMode) -> Result<()> {
        self.tb.in_ns(&self.node, || -> Result<()> {
            let [external, pods @ ..] = NODE_IFACES;
            dp.attach(external, mode)?;
            attach_tc(dp, external, EXT_PROGRAM, None)?;
            register(dp, external, 0)?;
            for ifname in pods {
                attach_tc(dp, ifname, POD_PROGRAM, None)?;
                register(dp, ifname, IFACE_POD)?;
            }
            Ok(())
        })?
    }

    /// Receive checksum errors (TCP and UDP `InCsumErrors` in
    /// `/proc/net/snmp`) in every namespace where translated packets end:
    /// `(namespace, protocol, count)`, non-zero counts only.
    pub fn checksum_errors(&self) -> Result<Vec<(&'static str, &'static str, u64)>> {
        let receivers = [(&self.client, "client")]
            .into_iter()
            .chain(self.pods.iter().map(|pod| (&pod.ns, pod.name)));
        let mut errors = Vec::new();
        for (ns, name) in receivers {
            // `/proc/net` is the main thread's namespace, not this thread's.
            let snmp = self
                .tb
                .in_ns(ns, || fs::read_to_string("/proc/thread-self/net/snmp"))?
                .with_context(|| format!("reading /proc/net/snmp in {name}"))?;
            for proto in ["Tcp", "Udp"] {
                let n = snmp_counter(&snmp, proto, "InCsumErrors")
                    .with_context(|| format!("/proc/net/snmp in {name}"))?;
                if n != 0 {
                    errors.push((name, proto, n));
                }
            }
        }
        Ok(errors)
    }

    /// `checksum_errors` as one line, for failure messages.
    pub fn checksum_report(&self) -> String {
        match self.checksum_errors() {
            Ok(errors) if errors.is_empty() => "receive checksum errors: none".into(),
            Ok(errors) => {
                let each: Vec<String> = errors
                    .iter()
                    .map(|(ns, proto, n)| format!("{ns} {proto}={n}"))
                    .collect();
                format!("receive checksum errors: {}", each.join(" "))
            }
            Err(err) => format!("receive checksum errors unknown: {err:#}"),
        }
    }
}

/// What a pod named `name` answers to `request`.
pub fn reply(name: &str, request: &[u8]) -> Vec<u8> {
    [name.as_bytes(), b":", request].concat()
}

/// The pods' server threads; drop stops and joins them.
#[derive(Default)]
struct Servers(ServerThreads);

impl Servers {
    /// Binds in `ns` (the sockets stay there) and serves from plain threads.
    fn start(&mut self, tb: &Testbed, pod: &Pod) -> Result<()> {
        let (tcp, udp) = tb
            .in_ns(&pod.ns, || -> io::Result<_> {
                Ok((
                    TcpListener::bind((pod.addr, BACKEND_TCP_PORT))?,
                    UdpSocket::bind((pod.addr, BACKEND_UDP_PORT))?,
                ))
            })?
            .with_context(|| format!("binding the servers of {}", pod.name))?;
        let name = pod.name;
        self.0.spawn(move |stop| serve_tcp(name, tcp, stop));
        self.0.spawn(move |stop| serve_udp(name, udp, stop));
        Ok(())
    }
}

fn serve_tcp(name: &str, listener: TcpListener, stop: &AtomicBool) {
    if let Err(err) = listener.set_nonblocking(true) {
        eprintln!("{name}: TCP server not started: {err}");
        return;
    }
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((conn, peer)) => {
                if let Err(err) = answer_tcp(name, conn) {
                    eprintln!("{name}: TCP exchange with {peer} failed: {err}");
                }
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => thread::sleep(POLL),
            Err(err) => {
                eprintln!("{name}: TCP server stopped: {err}");
                return;
            }
        }
    }
}

/// Reads the whole request (the client half-closes), then answers and closes.
fn answer_tcp(name: &str, mut conn: std::net::TcpStream) -> io::Result<()> {
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(TIMEOUT))?;
    conn.set_write_timeout(Some(TIMEOUT))?;
    let mut request = Vec::new();
    conn.read_to_end(&mut request)?;
    conn.write_all(&reply(name, &request))
}

fn serve_udp(name: &str, socket: UdpSocket, stop: &AtomicBool) {
    if let Err(err) = socket.set_read_timeout(Some(POLL)) {
        eprintln!("{name}: UDP server not started: {err}");
        return;
    }
    let mut buf = vec![0; 65_536];
    while !stop.load(Ordering::Relaxed) {
        match socket.recv_from(&mut buf) {
            Ok((len, peer)) => answer_udp(name, &socket, &buf[..len], peer),
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(err) => {
                eprintln!("{name}: UDP server stopped: {err}");
                return;
            }
        }
    }
}

fn answer_udp(name: &str, socket: &UdpSocket, request: &[u8], peer: SocketAddr) {
    if let Err(err) = socket.send_to(&reply(name, request), peer) {
        eprintln!("{name}: UDP reply to {peer} failed: {err}");
    }
}

/// Value of `counter` on the `proto:` lines of `/proc/net/snmp`, which come
/// in pairs: the counter names, then their values.
fn snmp_counter(snmp: &str, proto: &str, counter: &str) -> Result<u64> {
    let prefix = format!("{proto}:");
    let mut lines = snmp
        .lines()
        .filter_map(|line| line.strip_prefix(&prefix))
        .map(str::split_whitespace);
    let (Some(names), Some(mut values)) = (lines.next(), lines.next()) else {
        bail!("no {prefix} lines");
    };
    let Some(at) = names.into_iter().position(|name| name == counter) else {
        bail!("no {proto} counter {counter}");
    };
    let value = values
        .nth(at)
        .with_context(|| format!("no value for {proto} {counter}"))?;
    value
        .parse()
        .with_context(|| format!("{proto} {counter} = {value:?}"))
}

/// Registers `ifname` (of the calling thread's namespace) in `IFACES` with
/// `flags`, as the agent does when it attaches.
fn register(dp: &mut Datapath, ifname: &str, flags: u32) -> Result<()> {
    let name = std::ffi::CString::new(ifname)?;
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    ensure!(index != 0, "no interface {ifname}");
    dp.maps.put_iface(index, IfaceInfo { flags })?;
    Ok(())
}

/// `ETHTOOL_GTXCSUM` / `ETHTOOL_STXCSUM` from `linux/ethtool.h`: get and set
/// transmit checksum offload, whatever feature flag the driver uses for it.
const ETHTOOL_GTXCSUM: u32 = 0x16;
const ETHTOOL_STXCSUM: u32 = 0x17;

/// `struct ethtool_value`.
#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

/// Turns off transmit checksum offload on `ifname` of the calling thread's
/// namespace, as `ethtool -K <ifname> tx off` would (ethtool itself is not
/// required), and checks that it stuck.
fn tx_checksum_off(ifname: &str) -> Result<()> {
    // SAFETY: plain socket(2); the fd is owned from here on.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error()).context("socket for SIOCETHTOOL");
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    ethtool_value(&sock, ifname, ETHTOOL_STXCSUM, 0)
        .with_context(|| format!("turning tx checksum offload off on {ifname}"))?;
    let on = ethtool_value(&sock, ifname, ETHTOOL_GTXCSUM, 0)
        .with_context(|| format!("reading tx checksum offload of {ifname}"))?;
    ensure!(on == 0, "tx checksum offload of {ifname} is still on");
    Ok(())
}

/// One `SIOCETHTOOL` request carrying a `struct ethtool_value`; returns the
/// value the kernel left in it.
fn ethtool_value(sock: &OwnedFd, ifname: &str, cmd: u32, data: u32) -> io::Result<u32> {
    // SAFETY: all-zero is a valid ifreq (an empty name, a null pointer).
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    // Keeps the terminating NUL the zeroed buffer already has.
    if ifname.len() >= req.ifr_name.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("interface name {ifname:?} too long"),
        ));
    }
    for (dst, &src) in req.ifr_name.iter_mut().zip(ifname.as_bytes()) {
        *dst = src as libc::c_char;
    }
    let mut value = EthtoolValue { cmd, data };
    req.ifr_ifru.ifru_data = (&raw mut value).cast();
    // SAFETY: req names an interface and points at a live ethtool_value of
    // the layout `cmd` expects; both outlive the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCETHTOOL, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value.data)
}
