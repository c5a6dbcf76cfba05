//! IPv6 ClusterIPs at the socket hooks, end to end: a dual-stack Service
//! and its IPv4 and IPv6 EndpointSlices go through the model and the
//! agent's syncer into the kernel's maps, and python3 clients in a cgroup
//! of the test's own, in the node namespace, reach the pods over IPv6 TCP
//! and UDP through `connect6`, `sendmsg6`, `recvmsg6` and `getpeername6`
//! (fd00::/8 addresses, inside the test's namespaces only). The node has no
//! route to the service ranges, so only a translated socket gets anywhere.
//! Needs root and a cgroup v2 mount; without them every test fails (never
//! skips) and says why.
mod common;

use std::collections::BTreeSet;
use std::fs;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use common::{
    cgroup::Cgroup,
    host_client::{run_in_ns, Op, Outcome},
};
use lb_common::{addr::to_map_v6, Config, ConfigV6, IfaceInfo, Reason, IFACE_POD, PROTO_TCP};
use lb_userspace::{
    datapath::{attach_cgroup, attach_tc, Capacities, Datapath, POD_PROGRAM},
    model::{desired_state, ModelOptions, NodeInfo},
    monitor::drain,
    sockdiag::netns_cookie,
    source::manifests::load_dir,
    sync::{NodeMaps, Syncer},
};
use testbed::netns::{Ns, Testbed};

const VIP6: &str = "fd00:96::10";
const VIP4: &str = "10.96.0.10";
/// A Service whose endpoints are all gone.
const EMPTY_VIP6: &str = "fd00:96::11";
const TCP_PORT: u16 = 80;
const UDP_PORT: u16 = 53;
const BACKEND_TCP_PORT: u16 = 8080;
const BACKEND_UDP_PORT: u16 = 5353;
/// Enough sockets that Maglev leaving a backend unused would be a bug.
const FLOWS: usize = 24;
const POD_NAMES: [&str; 2] = ["b1", "b2"];

/// `dual` has both families' ClusterIPs, `empty` an IPv6 one without
/// endpoints.
const MANIFESTS: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: dual, namespace: default}
spec:
  clusterIP: 10.96.0.10
  clusterIPs: [10.96.0.10, "fd00:96::10"]
  ipFamilies: [IPv4, IPv6]
  ipFamilyPolicy: RequireDualStack
  ports:
    - {name: http, port: 80, targetPort: 8080}
    - {name: dns, port: 53, targetPort: 5353, protocol: UDP}
---
apiVersion: v1
kind: Service
metadata: {name: empty, namespace: default}
spec:
  clusterIPs: ["fd00:96::11"]
  ipFamilies: [IPv6]
  ports:
    - {name: http, port: 80}
    - {name: dns, port: 53, protocol: UDP}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: dual-v6
  namespace: default
  labels: {kubernetes.io/service-name: dual}
addressType: IPv6
ports:
  - {name: http, port: 8080}
  - {name: dns, port: 5353, protocol: UDP}
endpoints:
  - addresses: ["fd00:244:1::2"]
  - addresses: ["fd00:244:2::2"]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: dual-v4
  namespace: default
  labels: {kubernetes.io/service-name: dual}
addressType: IPv4
ports:
  - {name: http, port: 8080}
  - {name: dns, port: 5353, protocol: UDP}
endpoints:
  - addresses: [10.244.1.2]
  - addresses: [10.244.2.2]
"#;

/// Drops in declaration order: servers stop, the programs detach with the
/// data plane, the namespaces go, the cgroup last.
struct Bed {
    _servers: Servers,
    dp: Datapath,
    tb: Testbed,
    node: Ns,
    pods: Vec<Ns>,
    cgroup: Cgroup,
}

/// The node and two pods with an IPv6 and an IPv4 address each, the
/// manifests synced into a loaded data plane, the socket programs attached
/// to a fresh cgroup.
fn bed() -> Bed {
    common::privileged("netns IPv6 host-client");
    let tb = Testbed::new().expect("a testbed");
    let node = tb.add_ns("node").expect("the node namespace");
    // Pods reach each other through the node.
    tb.sysctl(&node, "net.ipv6.conf.all.forwarding", "1")
        .expect("IPv6 forwarding");
    let mut pods = Vec::new();
    let mut servers = Servers::default();
    for (i, name) in POD_NAMES.into_iter().enumerate() {
        let n = i + 1;
        let pod = tb.add_ns(name).expect("a pod namespace");
        let node_if = format!("to-{name}");
        tb.veth(&pod, "eth0", &node, &node_if).expect("a veth");
        for (pod_addr, gateway) in [
            (format!("fd00:244:{n}::2/64"), format!("fd00:244:{n}::1/64")),
            (format!("10.244.{n}.2/24"), format!("10.244.{n}.1/24")),
        ] {
            tb.addr(&pod, "eth0", &pod_addr).expect("a pod address");
            tb.addr(&node, &node_if, &gateway)
                .expect("a gateway address");
        }
        tb.up(&pod, "eth0").expect("pod link up");
        tb.up(&node, &node_if).expect("node link up");
        tb.route(&pod, &format!("default via fd00:244:{n}::1"))
            .expect("an IPv6 default route");
        tb.route(&pod, &format!("default via 10.244.{n}.1"))
            .expect("an IPv4 default route");
        servers.start(&tb, &pod, name);
        pods.push(pod);
    }

    let dir = tempdir();
    fs::write(dir.join("cluster.yaml"), MANIFESTS).expect("writing the manifests");
    let (objects, report) = load_dir(&dir).expect("reading the manifests");
    fs::remove_dir_all(&dir).expect("removing the manifests");
    assert_eq!(report.problems, [], "the manifests must load");
    let desired = desired_state(
        &objects.services,
        &objects.slices,
        &NodeInfo::default(),
        &ModelOptions::default(),
    );
    assert_eq!(desired.problems, [], "the manifests must be valid");
    let mut dp = Datapath::load(&Capacities::small(), None).expect("loading the object");
    let mut syncer = Syncer::recover(&mut dp.maps).expect("reading the empty maps");
    let report = syncer
        .sync(&desired, &mut dp.maps)
        .expect("syncing the Services");
    assert_eq!(report.refused, [], "every Service port fits");
    let cgroup = Cgroup::new(false).expect("a cgroup for the socket programs");
    attach_cgroup(&mut dp, cgroup.dir(), None).expect("attaching the socket programs");
    Bed {
        _servers: servers,
        dp,
        tb,
        node,
        pods,
        cgroup,
    }
}

/// A fresh folder of this test's own (tests of a binary run in parallel).
fn tempdir() -> std::path::PathBuf {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "xl-v6-manifests-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir(&dir).expect("a manifests folder");
    dir
}

/// What pod `name` answers to `request`.
fn reply(name: &str, request: &str) -> String {
    format!("{name}:{request}")
}

/// TCP and UDP servers on every address of a pod, each answering with the
/// pod's name and the request; drop stops them.
#[derive(Default)]
struct Servers {
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Servers {
    fn start(&mut self, tb: &Testbed, pod: &Ns, name: &'static str) {
        // Bound inside the pod, so the sockets stay in its namespace.
        let (tcp, udp) = tb
            .in_ns(pod, || -> io::Result<(TcpListener, UdpSocket)> {
                Ok((
                    TcpListener::bind(("::", BACKEND_TCP_PORT))?,
                    UdpSocket::bind(("::", BACKEND_UDP_PORT))?,
                ))
            })
            .expect("entering the pod")
            .expect("binding the pod's servers");
        tcp.set_nonblocking(true).expect("a non-blocking listener");
        udp.set_read_timeout(Some(Duration::from_millis(20)))
            .expect("a UDP timeout");
        let stop = self.stop.clone();
        self.threads.push(thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match tcp.accept() {
                    Ok((mut conn, _)) => {
                        conn.set_nonblocking(false).expect("a blocking connection");
                        conn.set_read_timeout(Some(Duration::from_secs(3)))
                            .expect("a read timeout");
                        let mut request = String::new();
                        if conn.read_to_string(&mut request).is_ok() {
                            let _ = conn.write_all(reply(name, &request).as_bytes());
                        }
                        let _ = conn.shutdown(Shutdown::Both);
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        }));
        let stop = self.stop.clone();
        self.threads.push(thread::spawn(move || {
            let mut buf = [0u8; 65536];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((n, from)) = udp.recv_from(&mut buf) {
                    let request = String::from_utf8_lossy(&buf[..n]);
                    let _ = udp.send_to(reply(name, &request).as_bytes(), from);
                }
            }
        }));
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Runs `ops` in one client process in the node namespace and the test's
/// cgroup.
fn run(bed: &Bed, ops: &[Op]) -> Vec<Outcome> {
    run_in_ns(&bed.node, Some(&bed.cgroup), ops)
}

/// Every exchange got a pod's answer to its request from `peer`; returns
/// the pods that answered.
fn answered(ops: &[Op], outcomes: &[Outcome], peer: SocketAddr) -> BTreeSet<&'static str> {
    let mut served = BTreeSet::new();
    for (op, outcome) in ops.iter().zip(outcomes) {
        let what = format!("{} to {}", op.kind, op.dst);
        let (from, answer) = outcome
            .result
            .as_ref()
            .unwrap_or_else(|errno| panic!("{what} failed: {errno}"));
        assert_eq!(*from, peer.to_string(), "{what}: peer or reply source");
        let pod = POD_NAMES
            .into_iter()
            .find(|pod| reply(pod, &op.request) == *answer)
            .unwrap_or_else(|| panic!("{what}: {answer:?} is no pod's answer"));
        served.insert(pod);
    }
    served
}

fn all_pods() -> BTreeSet<&'static str> {
    POD_NAMES.into_iter().collect()
}

fn requests(kind: &'static str, dst: SocketAddr) -> Vec<Op> {
    (0..FLOWS)
        .map(|flow| Op {
            kind,
            dst,
            request: format!("{kind} flow {flow}"),
        })
        .collect()
}

fn addr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().expect("an IP address"), port)
}

#[test]
fn tcp_to_an_ipv6_cluster_ip_reaches_both_ipv6_backends_and_names_the_vip() {
    let bed = bed();
    let vip = addr(VIP6, TCP_PORT);
    let ops = requests("tcp", vip);
    assert_eq!(answered(&ops, &run(&bed, &ops), vip), all_pods());
}

#[test]
fn udp_to_an_ipv6_cluster_ip_is_answered_from_the_vip() {
    let bed = bed();
    let vip = addr(VIP6, UDP_PORT);
    for kind in ["udp", "udpto"] {
        let ops = requests(kind, vip);
        assert_eq!(answered(&ops, &run(&bed, &ops), vip), all_pods(), "{kind}");
    }
}

#[test]
fn an_ipv6_cluster_ip_without_endpoints_refuses() {
    let bed = bed();
    let ops: Vec<Op> = [("tcp", TCP_PORT), ("udp", UDP_PORT), ("udpto", UDP_PORT)]
        .into_iter()
        .map(|(kind, port)| Op {
            kind,
            dst: addr(EMPTY_VIP6, port),
            request: "hello".into(),
        })
        .collect();
    for (outcome, op) in run(&bed, &ops).iter().zip(&ops) {
        assert_eq!(outcome.result, Err("ECONNREFUSED".into()), "{}", op.kind);
    }
}

/// `xdplb monitor` shows the IPv6 hooks' decisions: each connect to the
/// ClusterIP with the backend it got, and the refusal of the one without
/// endpoints with its Service.
#[test]
fn the_ipv6_socket_hooks_decisions_show_in_the_monitor() {
    let mut bed = bed();
    let mut ring = common::watch(&mut bed.dp);
    let vip = addr(VIP6, TCP_PORT);
    let ops = requests("tcp", vip);
    assert_eq!(answered(&ops, &run(&bed, &ops), vip), all_pods());
    let refused = [Op {
        kind: "tcp",
        dst: addr(EMPTY_VIP6, TCP_PORT),
        request: "hello".into(),
    }];
    assert_eq!(run(&bed, &refused)[0].result, Err("ECONNREFUSED".into()));

    let events = drain(&mut ring);
    let of = |r: Reason| events.iter().filter(move |e| e.reason == r as u32);
    let backends: BTreeSet<_> = of(Reason::SockTranslated)
        .map(|e| {
            assert_eq!(
                (e.daddr, e.dport, e.proto, e.saddr),
                (Some(vip.ip()), TCP_PORT.to_be(), PROTO_TCP, None),
                "{e:?}"
            );
            assert_ne!(e.svc_id, 0, "{e:?}");
            (e.to_addr, u16::from_be(e.to_port))
        })
        .collect();
    let pods = |n| {
        (
            Some(format!("fd00:244:{n}::2").parse().unwrap()),
            BACKEND_TCP_PORT,
        )
    };
    assert_eq!(backends, BTreeSet::from([pods(1), pods(2)]));
    assert_eq!(of(Reason::SockTranslated).count(), FLOWS);
    let no: Vec<_> = of(Reason::SockRefused).collect();
    assert_eq!(no.len(), 1, "{events:?}");
    assert_eq!(no[0].daddr, Some(EMPTY_VIP6.parse().unwrap()));
    assert_ne!(no[0].svc_id, 0, "the refused Service is named");
    assert_eq!(no[0].to_addr, None);
}

/// A dual-stack socket addressing the IPv4 ClusterIP as `::ffff:a.b.c.d`
/// is served by the IPv4 frontend and sees the mapped VIP as its peer.
#[test]
fn an_ipv4_mapped_cluster_ip_is_served_by_the_ipv4_frontend() {
    let bed = bed();
    let mapped = format!("::ffff:{VIP4}");
    for (kind, port) in [("tcp", TCP_PORT), ("udpto", UDP_PORT)] {
        let vip = addr(&mapped, port);
        let ops = requests(kind, vip);
        assert_eq!(answered(&ops, &run(&bed, &ops), vip), all_pods(), "{kind}");
    }
}

/// A pod's IPv6 UDP under the hooks is translated at the socket, not left
/// to the per-packet path as IPv4's is, unless the agent says that path can
/// take it: it cannot without source NAT, which a pod reaching itself
/// through its Service needs.
#[test]
fn a_pods_ipv6_udp_is_translated_at_the_socket() {
    let mut bed = bed();
    name_the_node(&mut bed);
    let vip = addr(VIP6, UDP_PORT);
    let ops = requests("udp", vip);
    let outcomes = run_in_ns(&bed.pods[0], Some(&bed.cgroup), &ops);
    assert_eq!(answered(&ops, &outcomes, vip), all_pods());
    let left = bed.dp.maps.reason_total(Reason::SockUdpLeftToPath);
    assert_eq!(left.expect("reading STATS"), 0);
}

/// Tells the socket hooks which namespace is the node's, as the agent
/// does: sockets of any other are pods'.
fn name_the_node(bed: &mut Bed) {
    let node_cookie = bed
        .tb
        .in_ns(&bed.node, netns_cookie)
        .expect("entering the node")
        .expect("the node namespace's cookie");
    let config = Config {
        host_netns_cookie: node_cookie,
        ..Config::DEFAULT
    };
    bed.dp.maps.put_config(config).expect("writing CONFIG");
}

/// `lb_pod` on the node's pod interfaces `ifnames`, as the agent attaches it.
fn attach_pod_path(bed: &mut Bed, ifnames: &[&str]) {
    let Bed { tb, node, dp, .. } = bed;
    tb.in_ns(node, || -> anyhow::Result<()> {
        for ifname in ifnames {
            attach_tc(dp, ifname, POD_PROGRAM, None)?;
            let name = std::ffi::CString::new(*ifname)?;
            let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
            anyhow::ensure!(index != 0, "no interface {ifname}");
            dp.maps.put_iface(index, IfaceInfo { flags: IFACE_POD })?;
        }
        Ok(())
    })
    .expect("entering the node")
    .expect("attaching lb_pod as the agent does");
}

/// With the IPv6 path able to source-NAT (the agent's `CONFIG_V6`), a
/// pod's IPv6 UDP under the hooks is left to the per-packet path, as
/// IPv4's is, so a connected socket follows its backend's removal; the pod
/// that reaches itself through the Service is answered through source NAT
/// to the node.
#[test]
fn a_pods_ipv6_udp_goes_to_the_per_packet_path_which_hairpins() {
    let mut bed = bed();
    name_the_node(&mut bed);
    let node_addr: std::net::Ipv6Addr = "fd00:244:1::1".parse().unwrap();
    bed.dp
        .maps
        .put_config_v6(ConfigV6 {
            snat_addr: to_map_v6(node_addr),
            pods_udp_per_packet: 1,
            _pad: 0,
        })
        .expect("writing CONFIG_V6");
    attach_pod_path(&mut bed, &["to-b1", "to-b2"]);
    let vip = addr(VIP6, UDP_PORT);
    let ops = requests("udp", vip);
    let outcomes = run_in_ns(&bed.pods[0], Some(&bed.cgroup), &ops);
    assert_eq!(
        answered(&ops, &outcomes, vip),
        all_pods(),
        "both backends, the client pod itself included"
    );
    let count = |r| bed.dp.maps.reason_total(r).expect("reading STATS");
    assert!(count(Reason::SockUdpLeftToPath) >= FLOWS as u64);
    assert!(count(Reason::SnatNewFlow) > 0, "the hairpin flows");
}

/// A pod outside the hooks' cgroup reaches the IPv6 ClusterIP through the
/// per-packet path at tc: `lb_pod` on the pods' interfaces, as the agent
/// attaches it, translates its packets and the backends' replies.
#[test]
fn a_pod_outside_the_hooks_reaches_an_ipv6_cluster_ip_through_the_tc_path() {
    let mut bed = bed();
    let client = bed.tb.add_ns("c").expect("a client pod");
    bed.tb
        .veth(&client, "eth0", &bed.node, "to-c")
        .expect("a veth");
    bed.tb
        .addr(&client, "eth0", "fd00:244:3::2/64")
        .expect("a pod address");
    bed.tb
        .addr(&bed.node, "to-c", "fd00:244:3::1/64")
        .expect("a gateway address");
    bed.tb.up(&client, "eth0").expect("pod link up");
    bed.tb.up(&bed.node, "to-c").expect("node link up");
    bed.tb
        .route(&client, "default via fd00:244:3::1")
        .expect("a default route");
    attach_pod_path(&mut bed, &["to-b1", "to-b2", "to-c"]);
    for (kind, port) in [("tcp", TCP_PORT), ("udp", UDP_PORT)] {
        let vip = addr(VIP6, port);
        let ops = requests(kind, vip);
        let outcomes = run_in_ns(&client, None, &ops);
        assert_eq!(answered(&ops, &outcomes, vip), all_pods(), "{kind}");
    }
    let count = |r| bed.dp.maps.reason_total(r).expect("reading STATS");
    assert_eq!(
        count(Reason::SockTranslated),
        0,
        "the sockets were not hooked"
    );
    assert!(
        count(Reason::XlateNew) >= 2 * FLOWS as u64,
        "every flow was new"
    );
    assert!(
        count(Reason::XlateReply) > 0,
        "replies came back translated"
    );
}

/// `xdplb services` lists the IPv6 ClusterIP beside the IPv4 one, with its
/// IPv6 backends; an `--addr` filter (IPv4) leaves IPv6 rows out.
#[test]
fn services_lists_ipv6_frontends_with_their_backends() {
    use lb_userspace::{cli::Filter, inspect::service_rows};
    let bed = bed();
    let dual = Filter {
        service: Some("default/dual:http/TCP".into()),
        addr: None,
    };
    let rows = service_rows(&bed.dp.maps, &dual).expect("reading the maps");
    let row = |frontend: &str| {
        rows.iter()
            .find(|r| r["frontend"] == frontend)
            .unwrap_or_else(|| panic!("no row for {frontend} in {rows:#?}"))
    };
    assert_eq!(
        row(&format!("[{VIP6}]:{TCP_PORT}/TCP"))["backends"],
        serde_json::json!(["[fd00:244:1::2]:8080", "[fd00:244:2::2]:8080"])
    );
    row(&format!("{VIP4}:{TCP_PORT}/TCP"));
    let by_addr = Filter {
        service: None,
        addr: Some(VIP4.parse().unwrap()),
    };
    let rows = service_rows(&bed.dp.maps, &by_addr).expect("reading the maps");
    assert!(
        rows.iter()
            .all(|r| !r["frontend"].as_str().unwrap().starts_with('[')),
        "{rows:#?}"
    );
}

/// The node's connected UDP sockets to a removed backend are closed, IPv6
/// and IPv4-mapped alike, and a socket to a live backend is left alone.
#[test]
fn connected_udp_sockets_of_removed_ipv6_and_mapped_backends_are_closed() {
    use std::net::{IpAddr, UdpSocket};
    let bed = bed();
    let closed = bed
        .tb
        .in_ns(&bed.node, || {
            let connected = |to: &str| {
                let s = UdpSocket::bind("[::]:0").expect("an IPv6 UDP socket");
                s.connect(to).expect("connecting");
                s
            };
            let v6 = connected("[fd00:244:1::2]:5353");
            let mapped = connected("[::ffff:10.244.2.2]:5353");
            let live = connected("[fd00:244:2::2]:5353");
            let removed: [(IpAddr, u16); 2] = [
                ("fd00:244:1::2".parse().unwrap(), 5353),
                ("10.244.2.2".parse().unwrap(), 5353),
            ];
            let closed = lb_userspace::sockdiag::close_udp_connected_to(&removed)
                .expect("closing the sockets");
            let aborted = |s: &UdpSocket| {
                s.set_nonblocking(true).unwrap();
                let err = s.recv(&mut [0u8; 8]).unwrap_err();
                err.raw_os_error() == Some(libc::ECONNABORTED)
            };
            (closed, aborted(&v6), aborted(&mapped), aborted(&live))
        })
        .unwrap();
    assert_eq!(closed, (2, true, true, false));
}
