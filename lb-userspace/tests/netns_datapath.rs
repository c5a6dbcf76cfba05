//! End-to-end tier: real sockets in a client namespace talk to a service VIP
//! that only the XDP program on the node makes reachable; the backends' real
//! servers answer with their name and the request. Needs root; without it
//! every test fails (never skips) and says why.
//!
//! The client and pods send with veth checksum offload, so the program sees
//! CHECKSUM_PARTIAL TCP and UDP fields (the pseudo-header sum only) in both
//! directions. The node keeps its offloads on, as real nodes do, so only the
//! payload comparison vouches for the translation there. The `..._verified`
//! tests turn the node's transmit offload off as an instrument (see the
//! topology): the node then completes every forwarded checksum over the
//! translated addresses and the receiving client and pods verify it, so a
//! field the translation got wrong gets the packet dropped and counted in
//! `InCsumErrors`, which every test requires to stay zero. The packet tier
//! covers complete checksums.
mod common;

use std::collections::BTreeSet;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpStream, UdpSocket};

use anyhow::Context;
use common::{
    topology::{reply, Checksums, Routes, Topology, BACKEND_TCP_PORT, BACKEND_UDP_PORT, TIMEOUT},
    Provision,
};
use lb_common::{Reason, PROTO_TCP, PROTO_UDP};
use lb_userspace::datapath::{Capacities, Datapath, XdpMode};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const VIP_TCP_PORT: u16 = 80;
const VIP_UDP_PORT: u16 = 53;
const TCP_SVC: u32 = 1;
const UDP_SVC: u32 = 2;
/// Enough flows that Maglev leaving a backend unused would be a bug, not luck.
const FLOWS: usize = 40;

#[test]
fn tcp_connections_through_the_vip_reach_both_backends_with_bytes_intact() {
    tcp_connections_through_the_vip(XdpMode::Native, Checksums::Trusted);
}

#[test]
fn tcp_connections_through_the_vip_in_generic_mode_reach_both_backends_with_bytes_intact() {
    tcp_connections_through_the_vip(XdpMode::Generic, Checksums::Trusted);
}

#[test]
fn tcp_checksums_through_the_vip_verified() {
    tcp_connections_through_the_vip(XdpMode::Native, Checksums::Verified);
}

#[test]
fn udp_datagrams_through_the_vip_reach_both_backends() {
    udp_datagrams_through_the_vip(Checksums::Trusted);
}

#[test]
fn udp_checksums_through_the_vip_verified() {
    udp_datagrams_through_the_vip(Checksums::Verified);
}

fn udp_datagrams_through_the_vip(checksums: Checksums) {
    let topo = Topology::build_with(checksums, Routes::Default).expect("building the topology");
    let dp = datapath(&topo, XdpMode::Native);
    // Several hundred bytes: a fragment would bypass translation.
    let requests: Vec<Vec<u8>> = (0..FLOWS)
        .map(|flow| payload(flow, 200 + 10 * flow))
        .collect();

    let (ports, replies) = topo
        .tb
        .in_ns(&topo.client, || -> anyhow::Result<_> {
            // All open at once, so every exchange has its own source port.
            let sockets = (0..FLOWS)
                .map(|_| UdpSocket::bind("0.0.0.0:0"))
                .collect::<io::Result<Vec<_>>>()?;
            let ports = sockets
                .iter()
                .map(|s| s.local_addr().map(|a| a.port()))
                .collect::<io::Result<BTreeSet<_>>>()?;
            let replies = sockets
                .iter()
                .zip(&requests)
                .enumerate()
                .map(|(flow, (socket, request))| {
                    udp_exchange(socket, request).with_context(|| format!("datagram {flow}"))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            Ok((ports, replies))
        })
        .unwrap()
        .unwrap_or_else(|err| panic!("{err:#}; {}", state(&topo, &dp)));
    assert_eq!(ports.len(), FLOWS, "source ports were not distinct");

    assert_both_backends_served(&topo, &requests, &replies);
    assert_eq!(
        count(&dp, Reason::XlateNew),
        FLOWS as u64,
        "{}",
        state(&topo, &dp)
    );
    assert_eq!(
        count(&dp, Reason::XlateReply),
        FLOWS as u64,
        "{}",
        state(&topo, &dp)
    );
    assert_no_checksum_errors(&topo);
}

fn tcp_connections_through_the_vip(mode: XdpMode, checksums: Checksums) {
    let topo = Topology::build_with(checksums, Routes::Default).expect("building the topology");
    let dp = datapath(&topo, mode);
    // A few KB each, so every request and reply spans several segments.
    let requests: Vec<Vec<u8>> = (0..FLOWS)
        .map(|flow| payload(flow, 3000 + 97 * flow))
        .collect();

    let replies = topo
        .tb
        .in_ns(&topo.client, || {
            requests
                .iter()
                .enumerate()
                .map(|(flow, request)| {
                    tcp_exchange(request).with_context(|| format!("connection {flow}"))
                })
                .collect::<anyhow::Result<Vec<_>>>()
        })
        .unwrap()
        .unwrap_or_else(|err| panic!("{err:#}; {}", state(&topo, &dp)));

    assert_both_backends_served(&topo, &requests, &replies);
    assert_eq!(
        count(&dp, Reason::XlateNew),
        FLOWS as u64,
        "{}",
        state(&topo, &dp)
    );
    assert!(count(&dp, Reason::XlateReply) > 0, "{}", state(&topo, &dp));
    assert_no_checksum_errors(&topo);
}

/// A data plane with the TCP and UDP services provisioned, attached in `mode`.
fn datapath(topo: &Topology, mode: XdpMode) -> Datapath {
    let mut dp = Datapath::load(&Capacities::small(), None).expect("loading the XDP object");
    let mut provision = Provision::new();
    provision.service(
        &mut dp,
        TCP_SVC,
        (VIP, VIP_TCP_PORT),
        PROTO_TCP,
        &topo.backends(BACKEND_TCP_PORT),
    );
    provision.service(
        &mut dp,
        UDP_SVC,
        (VIP, VIP_UDP_PORT),
        PROTO_UDP,
        &topo.backends(BACKEND_UDP_PORT),
    );
    topo.attach(&mut dp, mode)
        .unwrap_or_else(|err| panic!("attaching in {mode:?} mode: {err:#}"));
    dp
}

/// Distinct per flow, and not a repetition a shifted or lost chunk could hide in.
fn payload(flow: usize, len: usize) -> Vec<u8> {
    let mut bytes = format!("flow {flow}:").into_bytes();
    bytes.extend((0..len).map(|i| (i * 7 + flow * 13 + i / 251) as u8));
    bytes
}

fn tcp_exchange(request: &[u8]) -> io::Result<Vec<u8>> {
    let mut conn = TcpStream::connect_timeout(&SocketAddr::from((VIP, VIP_TCP_PORT)), TIMEOUT)?;
    conn.set_read_timeout(Some(TIMEOUT))?;
    conn.set_write_timeout(Some(TIMEOUT))?;
    conn.write_all(request)?;
    // Tells the server the request is complete.
    conn.shutdown(Shutdown::Write)?;
    let mut answer = Vec::new();
    conn.read_to_end(&mut answer).map_err(explain_timeout)?;
    Ok(answer)
}

fn udp_exchange(socket: &UdpSocket, request: &[u8]) -> io::Result<Vec<u8>> {
    // Connected, so the kernel only delivers a reply whose source was
    // translated back to the VIP.
    socket.connect((VIP, VIP_UDP_PORT))?;
    socket.set_read_timeout(Some(TIMEOUT))?;
    socket.send(request)?;
    let mut buf = vec![0; 65_536];
    let len = socket.recv(&mut buf).map_err(explain_timeout)?;
    buf.truncate(len);
    Ok(buf)
}

/// A socket read timeout surfaces as EAGAIN, whose message hides that the
/// answer never came.
fn explain_timeout(err: io::Error) -> io::Error {
    if err.kind() == io::ErrorKind::WouldBlock {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no answer within {TIMEOUT:?}"),
        )
    } else {
        err
    }
}

/// Every reply is exactly what one of the pods answers to its request, and
/// each pod answered at least one.
fn assert_both_backends_served(topo: &Topology, requests: &[Vec<u8>], replies: &[Vec<u8>]) {
    let mut served = BTreeSet::new();
    for (flow, (request, answer)) in requests.iter().zip(replies).enumerate() {
        let Some(pod) = topo
            .pods
            .iter()
            .find(|pod| reply(pod.name, request) == *answer)
        else {
            panic!(
                "flow {flow}: reply of {} bytes to a {}-byte request is no pod's answer; \
                 it starts {:?}",
                answer.len(),
                request.len(),
                String::from_utf8_lossy(&answer[..answer.len().min(24)])
            );
        };
        served.insert(pod.name);
    }
    let all: BTreeSet<_> = topo.pods.iter().map(|pod| pod.name).collect();
    assert_eq!(served, all, "not every backend got a flow");
}

/// No receiver dropped a packet for its TCP or UDP checksum. The exchanges
/// succeeding is not enough: a retransmission can make up for a few.
fn assert_no_checksum_errors(topo: &Topology) {
    let errors = topo.checksum_errors().expect("reading checksum counters");
    assert!(errors.is_empty(), "{}", topo.checksum_report());
}

fn count(dp: &Datapath, reason: Reason) -> u64 {
    dp.maps.reason_total(reason).unwrap()
}

/// The data plane's counters and the receivers' checksum errors, for
/// failure messages.
fn state(topo: &Topology, dp: &Datapath) -> String {
    format!("{}; {}", counters(dp), topo.checksum_report())
}

/// The non-zero path counters.
fn counters(dp: &Datapath) -> String {
    let totals = dp.maps.reason_totals().unwrap();
    let nonzero: Vec<String> = totals
        .iter()
        .filter(|(_, n)| *n != 0)
        .map(|(reason, n)| format!("{}={n}", reason.name()))
        .collect();
    if nonzero.is_empty() {
        return "data-path counters: all zero".into();
    }
    format!("data-path counters: {}", nonzero.join(" "))
}
