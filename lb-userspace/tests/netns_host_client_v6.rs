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
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use common::cgroup::Cgroup;
use lb_userspace::{
    datapath::{attach_cgroup, Capacities, Datapath},
    model::{desired_state, ModelOptions, NodeInfo},
    source::manifests::load_dir,
    sync::Syncer,
    testbed::netns::{Ns, Testbed},
};

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

/// Runs each `kind host port request` of its arguments in turn and prints
/// one line per exchange: `ok <peer> <reply>` or `err <errno name>`, the
/// peer being what `getpeername()` names for TCP and the reply's source
/// for UDP, as `[addr]:port`. Every socket is AF_INET6: `tcp` and `udp`
/// connect, `udpto` sends unconnected.
const CLIENT: &str = r#"
import errno, socket, sys

TIMEOUT = 3.0

def name(sa):
    return "[%s]:%d" % (sa[0], sa[1])

def tcp(dst, request):
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
        s.settimeout(TIMEOUT)
        s.connect(dst)
        peer = s.getpeername()
        s.sendall(request)
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
        return peer, b"".join(chunks)

def udp(dst, request):
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
        s.settimeout(TIMEOUT)
        s.connect(dst)
        s.send(request)
        answer, source = s.recvfrom(65536)
        return source, answer

def udpto(dst, request):
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
        s.settimeout(TIMEOUT)
        s.sendto(request, dst)
        answer, source = s.recvfrom(65536)
        return source, answer

args = sys.argv[1:]
for i in range(0, len(args), 4):
    kind, host, port, request = args[i:i + 4]
    try:
        source, answer = globals()[kind]((host, int(port)), request.encode())
        out = ["ok", name(source), answer.decode()]
    except TimeoutError:
        out = ["err", "timeout"]
    except OSError as e:
        out = ["err", errno.errorcode.get(e.errno, str(e))]
    print("\t".join(out), flush=True)
"#;

/// Drops in declaration order: servers stop, the programs detach with the
/// data plane, the namespaces go, the cgroup last.
struct Bed {
    _servers: Servers,
    _dp: Datapath,
    _tb: Testbed,
    node: Ns,
    _pods: Vec<Ns>,
    cgroup: Cgroup,
}

/// The node and two pods with an IPv6 and an IPv4 address each, the
/// manifests synced into a loaded data plane, the socket programs attached
/// to a fresh cgroup.
fn bed() -> Bed {
    common::privileged("netns IPv6 host-client");
    let tb = Testbed::new().expect("a testbed");
    let node = tb.add_ns("node").expect("the node namespace");
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
        _dp: dp,
        _tb: tb,
        node,
        _pods: pods,
        cgroup,
    }
}

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("xl-v6-manifests-{}", std::process::id()));
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

/// Runs `ops` (kind, host, port, request) in one client process in the
/// node namespace and the test's cgroup; one `Ok((peer, reply))` or
/// `Err(errno name)` each.
fn run(bed: &Bed, ops: &[(&str, &str, u16, String)]) -> Vec<Result<(String, String), String>> {
    let netns = File::open(Path::new("/run/netns").join(bed.node.name()))
        .expect("opening the node namespace");
    let procs = OpenOptions::new()
        .write(true)
        .open(bed.cgroup.dir().join("cgroup.procs"))
        .expect("opening cgroup.procs");
    let mut cmd = Command::new("timeout");
    cmd.args(["--kill-after=5", "60", "python3", "-c", CLIENT]);
    for (kind, host, port, request) in ops {
        cmd.arg(kind).arg(host).arg(port.to_string()).arg(request);
    }
    let (netns_fd, procs_fd) = (netns.as_raw_fd(), procs.as_raw_fd());
    // SAFETY: the closure makes only async-signal-safe syscalls, on
    // descriptors this function keeps open until the child has exited.
    unsafe { cmd.pre_exec(move || enter(netns_fd, procs_fd)) };
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .expect("running python3 (needed for the clients)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "client failed ({}): {}\n{stdout}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let outcomes: Vec<_> = stdout
        .lines()
        .map(|line| match line.splitn(3, '\t').collect::<Vec<_>>()[..] {
            ["ok", peer, answer] => Ok((peer.to_string(), answer.to_string())),
            ["err", errno] => Err(errno.to_string()),
            _ => panic!("unexpected client line {line:?}"),
        })
        .collect();
    assert_eq!(outcomes.len(), ops.len(), "client output: {stdout}");
    outcomes
}

/// In the child between fork and exec: joins the cgroup first, so every
/// socket the client opens belongs to it, then the node namespace.
fn enter(netns: RawFd, cgroup_procs: RawFd) -> io::Result<()> {
    // "0" moves the writing process itself.
    // SAFETY: plain write(2) of a static buffer.
    if unsafe { libc::write(cgroup_procs, b"0".as_ptr().cast(), 1) } != 1 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: plain setns(2) on a namespace descriptor.
    if unsafe { libc::setns(netns, libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Every exchange got a pod's answer to its request from `peer`; returns
/// the pods that answered.
fn answered(
    ops: &[(&str, &str, u16, String)],
    outcomes: &[Result<(String, String), String>],
    peer: &str,
) -> BTreeSet<&'static str> {
    let mut served = BTreeSet::new();
    for ((kind, host, port, request), outcome) in ops.iter().zip(outcomes) {
        let what = format!("{kind} to [{host}]:{port}");
        let (from, answer) = outcome
            .as_ref()
            .unwrap_or_else(|errno| panic!("{what} failed: {errno}"));
        assert_eq!(from, peer, "{what}: peer or reply source");
        let pod = POD_NAMES
            .into_iter()
            .find(|pod| reply(pod, request) == *answer)
            .unwrap_or_else(|| panic!("{what}: {answer:?} is no pod's answer"));
        served.insert(pod);
    }
    served
}

fn all_pods() -> BTreeSet<&'static str> {
    POD_NAMES.into_iter().collect()
}

fn requests<'a>(kind: &'a str, host: &'a str, port: u16) -> Vec<(&'a str, &'a str, u16, String)> {
    (0..FLOWS)
        .map(|flow| (kind, host, port, format!("{kind} flow {flow}")))
        .collect()
}

#[test]
fn tcp_to_an_ipv6_cluster_ip_reaches_both_ipv6_backends_and_names_the_vip() {
    let bed = bed();
    let ops = requests("tcp", VIP6, TCP_PORT);
    let outcomes = run(&bed, &ops);
    let vip = SocketAddr::new(VIP6.parse().unwrap(), TCP_PORT);
    assert_eq!(answered(&ops, &outcomes, &vip.to_string()), all_pods());
}

#[test]
fn udp_to_an_ipv6_cluster_ip_is_answered_from_the_vip() {
    let bed = bed();
    let vip = SocketAddr::new(VIP6.parse().unwrap(), UDP_PORT).to_string();
    for kind in ["udp", "udpto"] {
        let ops = requests(kind, VIP6, UDP_PORT);
        let outcomes = run(&bed, &ops);
        assert_eq!(answered(&ops, &outcomes, &vip), all_pods(), "{kind}");
    }
}

#[test]
fn an_ipv6_cluster_ip_without_endpoints_refuses() {
    let bed = bed();
    let ops = [
        ("tcp", EMPTY_VIP6, TCP_PORT, "hello".to_string()),
        ("udp", EMPTY_VIP6, UDP_PORT, "hello".to_string()),
        ("udpto", EMPTY_VIP6, UDP_PORT, "hello".to_string()),
    ];
    for (outcome, (kind, ..)) in run(&bed, &ops).iter().zip(&ops) {
        assert_eq!(outcome, &Err("ECONNREFUSED".to_string()), "{kind}");
    }
}

/// A dual-stack socket addressing the IPv4 ClusterIP as `::ffff:a.b.c.d`
/// is served by the IPv4 frontend and sees the mapped VIP as its peer.
#[test]
fn an_ipv4_mapped_cluster_ip_is_served_by_the_ipv4_frontend() {
    let bed = bed();
    let mapped = format!("::ffff:{VIP4}");
    let ops = requests("tcp", &mapped, TCP_PORT);
    let outcomes = run(&bed, &ops);
    let peer = format!("[{mapped}]:{TCP_PORT}");
    assert_eq!(answered(&ops, &outcomes, &peer), all_pods());
    let ops = requests("udpto", &mapped, UDP_PORT);
    let outcomes = run(&bed, &ops);
    let peer = format!("[{mapped}]:{UDP_PORT}");
    assert_eq!(answered(&ops, &outcomes, &peer), all_pods());
}
