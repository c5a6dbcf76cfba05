//! Host-network clients: processes in the node's own namespace, whose
//! packets XDP never sees, reach Services through the cgroup socket programs
//! (`connect4`, `sendmsg4`, `recvmsg4`). BPF_PROG_TEST_RUN cannot run those,
//! so real clients do: python3 processes that join the node namespace and a
//! cgroup of the test's own before they start, with the programs attached to
//! that cgroup and no XDP program anywhere. The pods' servers answer with
//! their name and the request. Needs root and a cgroup v2 mount; without
//! them every test fails (never skips) and says why.
mod common;

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use common::{
    cgroup::Cgroup,
    host_client::{enter, run_in_ns, Op, Outcome},
    topology::{reply, Checksums, Routes, Topology, BACKEND_TCP_PORT, BACKEND_UDP_PORT},
    Provision,
};
use lb_common::{FrontendValue, PROTO_TCP, PROTO_UDP};
use lb_userspace::{
    datapath::{attach_cgroup, Capacities, Datapath},
    sync::NodeMaps,
};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
/// A Service whose endpoints are all gone.
const EMPTY_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 11);
const AFFINITY_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 12);
/// In the service range, which the node has no route for (see
/// `Routes::ConnectedOnly`), but no frontend.
const NOT_A_FRONTEND: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 99);
const TCP_PORT: u16 = 80;
const UDP_PORT: u16 = 53;
/// Enough sockets that Maglev leaving a backend unused would be a bug, not luck.
const FLOWS: usize = 40;
/// "At once": far below any connect or retransmission timeout.
const AT_ONCE_MS: f64 = 500.0;
/// This binary's cgroups and pin directories are `<prefix><pid>-<n>`.
const DIR_PREFIX: &str = "xl-host-client-";

fn op(kind: &'static str, addr: Ipv4Addr, port: u16, request: String) -> Op {
    Op {
        kind,
        dst: SocketAddrV4::new(addr, port).into(),
        request,
    }
}

/// Creates `<root>/<prefix><pid>-<n>`, first removing with `remove` those
/// of killed runs, recognised by a dead pid in their name.
fn unique_dir(root: &Path, remove: fn(&Path) -> io::Result<()>) -> PathBuf {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    for entry in fs::read_dir(root).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(DIR_PREFIX)
            .and_then(|rest| rest.split('-').next())
        else {
            continue;
        };
        if !Path::new("/proc").join(pid).exists() {
            let _ = remove(&entry.path());
        }
    }
    let path = root.join(format!(
        "{DIR_PREFIX}{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    fs::create_dir(&path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
    path
}

/// A directory of its own on the bpffs at /sys/fs/bpf, as the agent pins
/// into; drop unpins everything in it.
struct PinDir(PathBuf);

impl PinDir {
    fn create() -> Self {
        Self(unique_dir(Path::new("/sys/fs/bpf"), |dir| {
            fs::remove_dir_all(dir)
        }))
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.0) {
            eprintln!("cannot remove {}: {e}", self.0.display());
        }
    }
}

/// Drops in declaration order: the cgroup goes last, once its programs are
/// detached and its clients long gone.
struct Host {
    topo: Topology,
    dp: Datapath,
    cgroup: Cgroup,
}

/// The node and pods, the Services provisioned, the socket programs
/// attached to a fresh cgroup.
fn host() -> Host {
    let topo = Topology::build_with(Checksums::Trusted, Routes::ConnectedOnly)
        .expect("building the topology");
    let mut dp = Datapath::load(&Capacities::small(), None).expect("loading the object");
    provision(&mut dp, &topo);
    let cgroup = Cgroup::new(false).expect("a cgroup for the socket programs");
    attach_cgroup(&mut dp, cgroup.dir(), None).expect("attaching the socket programs");
    Host { topo, dp, cgroup }
}

fn provision(dp: &mut Datapath, topo: &Topology) {
    let mut provision = Provision::new();
    provision.service(
        dp,
        1,
        (VIP, TCP_PORT),
        PROTO_TCP,
        &topo.backends(BACKEND_TCP_PORT),
    );
    provision.service(
        dp,
        2,
        (VIP, UDP_PORT),
        PROTO_UDP,
        &topo.backends(BACKEND_UDP_PORT),
    );
    provision.service(dp, 3, (EMPTY_VIP, TCP_PORT), PROTO_TCP, &[]);
    provision.service(dp, 4, (EMPTY_VIP, UDP_PORT), PROTO_UDP, &[]);
    provision.service_with(
        dp,
        5,
        (AFFINITY_VIP, TCP_PORT),
        PROTO_TCP,
        &topo.backends(BACKEND_TCP_PORT),
        0,
        FrontendValue {
            affinity_timeout_s: 600,
            ..FrontendValue::default()
        },
    );
}

/// Runs `ops` in one client process in the node namespace, inside the test's
/// cgroup if `in_cgroup`.
fn run(host: &Host, in_cgroup: bool, ops: &[Op]) -> Vec<Outcome> {
    run_in(&host.topo, in_cgroup.then_some(&host.cgroup), ops)
}

/// Runs `ops` in one client process in the node namespace, inside `cgroup`
/// if given.
fn run_in(topo: &Topology, cgroup: Option<&Cgroup>, ops: &[Op]) -> Vec<Outcome> {
    run_in_ns(&topo.node, cgroup, ops)
}

/// Distinct per flow, several segments long for TCP, and not a repetition
/// a shifted or lost chunk could hide in.
fn payload(flow: usize, len: usize) -> String {
    let body: String = (0..len)
        .map(|i| (b'a' + ((i * 7 + flow * 13 + i / 251) % 26) as u8) as char)
        .collect();
    format!("flow {flow}:{body}")
}

/// The pod whose answer to `request` `answer` is, if any.
fn served_by<'a>(topo: &'a Topology, request: &str, answer: &str) -> Option<&'a str> {
    topo.pods
        .iter()
        .find(|pod| reply(pod.name, request.as_bytes()) == answer.as_bytes())
        .map(|pod| pod.name)
}

/// Every exchange got exactly a pod's answer to its request (and, when
/// `source` is given, from that address); returns the pods that answered.
fn assert_answered<'a>(
    topo: &'a Topology,
    ops: &[Op],
    outcomes: &[Outcome],
    source: Option<&str>,
) -> BTreeSet<&'a str> {
    let mut served = BTreeSet::new();
    for (i, (op, outcome)) in ops.iter().zip(outcomes).enumerate() {
        let (from, answer) = match &outcome.result {
            Ok(ok) => ok,
            Err(errno) => panic!("{} {i} to {} failed: {errno}", op.kind, op.dst),
        };
        let Some(pod) = served_by(topo, &op.request, answer) else {
            panic!(
                "{} {i} to {}: a {}-byte reply to a {}-byte request is no pod's answer; \
                 it starts {:?}",
                op.kind,
                op.dst,
                answer.len(),
                op.request.len(),
                &answer[..answer.len().min(24)]
            );
        };
        if let Some(source) = source {
            assert_eq!(from, source, "{} {i}: source", op.kind);
        }
        served.insert(pod);
    }
    served
}

fn all_pods(host: &Host) -> BTreeSet<&str> {
    host.topo.pods.iter().map(|pod| pod.name).collect()
}

fn assert_error(outcome: &Outcome, errno: &str, what: &str) {
    assert_eq!(
        outcome.result,
        Err(errno.to_string()),
        "{what}: {outcome:?}"
    );
}

#[test]
fn tcp_connections_to_the_vip_reach_both_backends_with_bytes_intact() {
    let host = host();
    let ops: Vec<Op> = (0..FLOWS)
        .map(|flow| op("tcp", VIP, TCP_PORT, payload(flow, 3000 + 97 * flow)))
        .collect();
    let outcomes = run(&host, true, &ops);
    // The peer reads as the VIP, as under kube-proxy's NAT.
    let vip = SocketAddrV4::new(VIP, TCP_PORT).to_string();
    let served = assert_answered(&host.topo, &ops, &outcomes, Some(&vip));
    assert_eq!(
        served,
        all_pods(&host),
        "not every backend got a connection"
    );
}

#[test]
fn udp_replies_come_from_the_vip_on_connected_and_unconnected_sockets() {
    let host = host();
    let vip = SocketAddrV4::new(VIP, UDP_PORT).to_string();
    for kind in ["udp", "udpto"] {
        let ops: Vec<Op> = (0..FLOWS)
            .map(|flow| op(kind, VIP, UDP_PORT, payload(flow, 200 + 10 * flow)))
            .collect();
        let outcomes = run(&host, true, &ops);
        let served = assert_answered(&host.topo, &ops, &outcomes, Some(&vip));
        assert_eq!(
            served,
            all_pods(&host),
            "{kind}: not every backend got a socket"
        );
    }
}

#[test]
fn a_frontend_without_backends_refuses_at_once() {
    let host = host();
    let ops = [
        op("tcp", EMPTY_VIP, TCP_PORT, "hello".into()),
        op("udp", EMPTY_VIP, UDP_PORT, "hello".into()),
        op("udpto", EMPTY_VIP, UDP_PORT, "hello".into()),
        // A frontend address on a port no Service has: the packet path
        // rejects that as well.
        op("tcp", VIP, TCP_PORT + 1, "hello".into()),
    ];
    let outcomes = run(&host, true, &ops);
    for (op, outcome) in ops.iter().zip(&outcomes) {
        let what = format!("{} to {}", op.kind, op.dst);
        assert_error(outcome, "ECONNREFUSED", &what);
        assert!(outcome.ms < AT_ONCE_MS, "{what} took {} ms", outcome.ms);
    }
}

#[test]
fn addresses_that_are_no_frontend_are_untouched() {
    let host = host();
    let [b1, b2] = [&host.topo.pods[0], &host.topo.pods[1]];
    let ops = [
        op("tcp", b1.addr, BACKEND_TCP_PORT, payload(0, 2000)),
        op("udpto", b2.addr, BACKEND_UDP_PORT, payload(1, 100)),
        op("tcp", NOT_A_FRONTEND, TCP_PORT, "hello".into()),
        op("udpto", NOT_A_FRONTEND, UDP_PORT, "hello".into()),
    ];
    let outcomes = run(&host, true, &ops);
    let b1_peer = SocketAddrV4::new(b1.addr, BACKEND_TCP_PORT).to_string();
    let served = assert_answered(&host.topo, &ops[..1], &outcomes[..1], Some(&b1_peer));
    assert_eq!(served, BTreeSet::from([b1.name]), "{outcomes:?}");
    let b2_source = SocketAddrV4::new(b2.addr, BACKEND_UDP_PORT).to_string();
    let served = assert_answered(&host.topo, &ops[1..2], &outcomes[1..2], Some(&b2_source));
    assert_eq!(served, BTreeSet::from([b2.name]), "{outcomes:?}");
    // Untranslated, they meet the node's missing route.
    assert_error(&outcomes[2], "ENETUNREACH", "tcp to no frontend");
    assert_error(&outcomes[3], "ENETUNREACH", "udpto to no frontend");
}

#[test]
fn processes_outside_the_cgroup_are_not_translated() {
    let host = host();
    let ops = [
        op("tcp", VIP, TCP_PORT, "hello".into()),
        op("udp", VIP, UDP_PORT, "hello".into()),
        op("udpto", VIP, UDP_PORT, "hello".into()),
        op("tcp", EMPTY_VIP, TCP_PORT, "hello".into()),
    ];
    let outcomes = run(&host, false, &ops);
    for (op, outcome) in ops.iter().zip(&outcomes) {
        assert_error(
            outcome,
            "ENETUNREACH",
            &format!("{} to {}", op.kind, op.dst),
        );
    }
    // The same client inside the cgroup is served, so the programs were live.
    let inside = run(&host, true, &ops[..1]);
    assert_answered(&host.topo, &ops[..1], &inside, None);
}

/// The netns cookies of the socket hooks' affinity entries for the
/// affinity frontend.
fn affinity_namespaces(host: &Host) -> BTreeSet<u64> {
    let entries = host
        .dp
        .maps
        .sock_affinity()
        .keys()
        .map(|key| key.expect("reading SOCK_AFFINITY_V4"))
        .filter(|key| key.frontend.addr == common::be(AFFINITY_VIP));
    entries.map(|key| key.netns_cookie).collect()
}

#[test]
fn client_ip_affinity_keeps_the_host_on_one_backend() {
    let host = host();
    let ops: Vec<Op> = (0..FLOWS)
        .map(|flow| op("tcp", AFFINITY_VIP, TCP_PORT, payload(flow, 100)))
        .collect();
    let outcomes = run(&host, true, &ops);
    let served = assert_answered(&host.topo, &ops, &outcomes, None);
    assert_eq!(served.len(), 1, "affinity let connections reach {served:?}");
    assert_eq!(affinity_namespaces(&host).len(), 1);
}

/// Unbound sockets have no source address when they connect. Keyed on it,
/// every pod under the hooks (the DaemonSet attaches them at the cgroup
/// root) would share one affinity entry and one backend; keyed on the
/// network namespace, each pod and the node stick on their own.
#[test]
fn client_ip_affinity_on_sockets_is_per_network_namespace() {
    let host = host();
    let ops: Vec<Op> = (0..FLOWS / 4)
        .map(|flow| op("tcp", AFFINITY_VIP, TCP_PORT, payload(flow, 10)))
        .collect();
    let mut namespaces = vec![&host.topo.node];
    namespaces.extend(host.topo.pods.iter().map(|p| &p.ns));
    for ns in &namespaces {
        let outcomes = run_in_ns(ns, Some(&host.cgroup), &ops);
        let served = assert_answered(&host.topo, &ops, &outcomes, None);
        assert_eq!(served.len(), 1, "from {}: {served:?}", ns.name());
    }
    assert_eq!(
        affinity_namespaces(&host).len(),
        namespaces.len(),
        "one affinity entry per client namespace"
    );
}

#[test]
fn pinned_links_outlive_the_loader_and_a_reload_replaces_them() {
    let topo = Topology::build_with(Checksums::Trusted, Routes::ConnectedOnly)
        .expect("building the topology");
    let cgroup = Cgroup::new(false).expect("a cgroup for the socket programs");
    let pins = PinDir::create();
    let (maps, links) = (pins.0.join("maps"), pins.0.join("links"));
    let ops = [op("tcp", VIP, TCP_PORT, payload(0, 100))];
    // As the agent starts: over the pinned maps, pinning the links. Each
    // loader is gone when the clients run.
    for start in 0..2 {
        let mut dp = Datapath::load(&Capacities::small(), Some(&maps)).expect("loading the object");
        if start == 0 {
            provision(&mut dp, &topo);
            // What an earlier version pinned and this one no longer reads.
            aya::maps::MapData::from_pin(maps.join("CONFIG"))
                .expect("opening a pinned map")
                .pin(maps.join("ADDR_FILTER"))
                .expect("pinning a stand-in for a retired map");
        } else {
            assert!(!maps.join("ADDR_FILTER").exists(), "retired pins removed");
        }
        attach_cgroup(&mut dp, cgroup.dir(), Some(&links)).expect("attaching the socket programs");
        drop(dp);
        let outcomes = run_in(&topo, Some(&cgroup), &ops);
        assert_answered(&topo, &ops, &outcomes, None);
    }
    let mut pinned: Vec<String> = fs::read_dir(&links)
        .expect("reading the links directory")
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    pinned.sort();
    assert_eq!(
        pinned,
        [
            "connect4",
            "connect6",
            "getpeername4",
            "getpeername6",
            "recvmsg4",
            "recvmsg6",
            "sendmsg4",
            "sendmsg6"
        ]
    );
    // Unpinning detaches: no link of either start is left translating.
    fs::remove_dir_all(&links).expect("unpinning the links");
    let outcomes = run_in(&topo, Some(&cgroup), &ops);
    assert_error(&outcomes[0], "ENETUNREACH", "tcp after unpinning");
}

/// A client that keeps one connected UDP socket: it prints the answer to
/// its first datagram, waits for a line on stdin, sends a second on the same
/// socket, then a third on a new one, printing `ok <reply>` or `err
/// <errno name>` for each.
const LONG_UDP_CLIENT: &str = r#"
import errno, socket, sys

def exchange(s, request):
    try:
        s.send(request)
        return "ok\t" + s.recv(65536).decode()
    except TimeoutError:
        return "err\ttimeout"
    except OSError as e:
        return "err\t" + errno.errorcode.get(e.errno, str(e))

dst = (sys.argv[1], int(sys.argv[2]))
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(3.0)
s.connect(dst)
print(exchange(s, b"first"), flush=True)
sys.stdin.readline()
print(exchange(s, b"second"), flush=True)
t = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
t.settimeout(3.0)
t.connect(dst)
print(exchange(t, b"third"), flush=True)
"#;

/// A connected UDP socket of the node whose backend goes: the agent's
/// SOCK_DESTROY closes it (the application's next call fails), and the
/// socket it opens next reaches a live backend. Without it the socket would
/// keep sending to the old backend for as long as it lives.
#[test]
fn a_connected_udp_socket_of_a_removed_backend_is_closed() {
    use std::io::{BufRead, BufReader, Write};
    let mut host = host();
    let netns = File::open(Path::new("/run/netns").join(host.topo.node.name())).unwrap();
    let procs = OpenOptions::new()
        .write(true)
        .open(host.cgroup.dir().join("cgroup.procs"))
        .unwrap();
    let (netns_fd, procs_fd) = (netns.as_raw_fd(), procs.as_raw_fd());
    let mut cmd = Command::new("timeout");
    cmd.args(["--kill-after=5", "60", "python3", "-c", LONG_UDP_CLIENT])
        .args([VIP.to_string(), UDP_PORT.to_string()]);
    // SAFETY: as in `run_in`.
    unsafe { cmd.pre_exec(move || enter(netns_fd, Some(procs_fd))) };
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("running python3");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next = || lines.next().expect("a line").expect("reading the client");
    let first = next();
    let (status, answer) = first.split_once('\t').expect("status and answer");
    assert_eq!(status, "ok", "{first}");
    let old = host
        .topo
        .pods
        .iter()
        .find(|p| reply(p.name, b"first") == answer.as_bytes())
        .expect("a pod answered");
    let live: Vec<(Ipv4Addr, u16)> = host
        .topo
        .backends(BACKEND_UDP_PORT)
        .into_iter()
        .filter(|(a, _)| *a != old.addr)
        .collect();
    Provision::new().service(&mut host.dp, 2, (VIP, UDP_PORT), PROTO_UDP, &live);
    let closed = host
        .topo
        .tb
        .in_ns(&host.topo.node, || {
            lb_userspace::sockdiag::close_udp_connected_to(&[(old.addr.into(), BACKEND_UDP_PORT)])
        })
        .unwrap()
        .expect("closing the sockets of the removed backend");
    assert_eq!(closed, 1);
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    // The kernel aborts the socket and disconnects it: a receive reports
    // ECONNABORTED, a send without an address EDESTADDRREQ.
    let second = next();
    assert!(
        ["err\tECONNABORTED", "err\tEDESTADDRREQ"].contains(&second.as_str()),
        "{second}"
    );
    let third = next();
    let other = host.topo.pods.iter().find(|p| p.addr != old.addr).unwrap();
    assert_eq!(
        third,
        format!(
            "ok\t{}",
            String::from_utf8_lossy(&reply(other.name, b"third"))
        )
    );
    assert!(child.wait().unwrap().success());
}

/// With the node's namespace known, a pod's UDP socket is left to the
/// per-packet path (which forgets a removed backend's flows), while the
/// node's own UDP and every TCP connection stay on the socket hooks.
/// Gives the data plane the node namespace's cookie, as the agent does.
fn tell_the_node_namespace(host: &mut Host) {
    let node_cookie = host
        .topo
        .tb
        .in_ns(&host.topo.node, lb_userspace::sockdiag::netns_cookie)
        .unwrap()
        .expect("the node namespace's cookie");
    let cfg = lb_common::Config {
        host_netns_cookie: node_cookie,
        ..lb_common::Config::DEFAULT
    };
    host.dp.maps.put_config(cfg).unwrap();
}

#[test]
fn pods_udp_is_left_to_the_packet_path() {
    use lb_common::Reason;
    let mut host = host();
    tell_the_node_namespace(&mut host);
    let count = |host: &Host, r: Reason| host.dp.maps.reason_total(r).unwrap();
    let udp = [op("udp", VIP, UDP_PORT, "from the node".into())];
    let outcomes = run(&host, true, &udp);
    assert_answered(&host.topo, &udp, &outcomes, None);
    assert_eq!(count(&host, Reason::SockTranslated), 1);

    let pod = &host.topo.pods[0].ns;
    let ops = [
        op("udp", VIP, UDP_PORT, "from a pod".into()),
        op("tcp", VIP, TCP_PORT, "from a pod".into()),
    ];
    // No per-packet path runs in this topology, so the pod's datagram goes
    // unanswered; the counters tell which path took what.
    run_in_ns(pod, Some(&host.cgroup), &ops);
    assert_eq!(count(&host, Reason::SockUdpLeftToPath), 1);
    assert_eq!(count(&host, Reason::SockTranslated), 2, "the pod's TCP");
}

/// NodePorts on localhost, as kube-proxy serves them to the node's own
/// processes: the agent lists them at 127.0.0.1, and every address of
/// 127.0.0.0/8 reaches them, the peer reading as the address asked for. A
/// pod's loopback is its own: its connection stays there.
#[test]
fn localhost_nodeports_serve_the_node_and_leave_a_pods_loopback_alone() {
    use lb_common::Reason;
    const NODE_PORT: u16 = 30080;
    let mut host = host();
    Provision::new().service(
        &mut host.dp,
        6,
        (Ipv4Addr::LOCALHOST, NODE_PORT),
        PROTO_TCP,
        &host.topo.backends(BACKEND_TCP_PORT),
    );
    tell_the_node_namespace(&mut host);
    let translated = |host: &Host| host.dp.maps.reason_total(Reason::SockTranslated).unwrap();
    for addr in [Ipv4Addr::LOCALHOST, Ipv4Addr::new(127, 1, 2, 3)] {
        let ops: Vec<Op> = (0..FLOWS)
            .map(|flow| op("tcp", addr, NODE_PORT, payload(flow, 500)))
            .collect();
        let outcomes = run(&host, true, &ops);
        let asked = SocketAddrV4::new(addr, NODE_PORT).to_string();
        let served = assert_answered(&host.topo, &ops, &outcomes, Some(&asked));
        assert_eq!(served, all_pods(&host), "{addr}: not every backend served");
    }
    let before = translated(&host);
    let pod = &host.topo.pods[0].ns;
    let ops = [op(
        "tcp",
        Ipv4Addr::LOCALHOST,
        NODE_PORT,
        "from a pod".into(),
    )];
    let outcome = &run_in_ns(pod, Some(&host.cgroup), &ops)[0];
    assert!(
        outcome.result.is_err(),
        "a pod's loopback answered: {outcome:?}"
    );
    assert_eq!(translated(&host), before, "the pod's connection translated");
}
