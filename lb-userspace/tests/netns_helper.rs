//! The namespace testbed itself: real traffic between namespaces, isolation
//! between parallel testbeds, and cleanup. Needs root; without it every test
//! fails (never skips) and says why.

use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::panic::{self, AssertUnwindSafe};
use std::process::Command;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use testbed::netns::{require_root, wait_until, Ns, Testbed};

const TIMEOUT: Duration = Duration::from_secs(5);

fn need_root() {
    if let Err(err) = require_root("netns helper") {
        panic!("{err:#}");
    }
}

fn testbed() -> Testbed {
    need_root();
    Testbed::new().expect("creating testbed")
}

/// Two namespaces `a` (10.213.7.1) and `b` (10.213.7.2) joined by a veth.
fn pair(tb: &Testbed) -> (Ns, Ns) {
    let a = tb.add_ns("a").unwrap();
    let b = tb.add_ns("b").unwrap();
    tb.veth(&a, "veth-a", &b, "veth-b").unwrap();
    for (ns, ifname, cidr) in [
        (&a, "veth-a", "10.213.7.1/24"),
        (&b, "veth-b", "10.213.7.2/24"),
    ] {
        tb.addr(ns, ifname, cidr).unwrap();
        tb.up(ns, ifname).unwrap();
    }
    (a, b)
}

fn netns_list() -> String {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(out.status.success(), "ip netns list: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

fn listed(name: &str) -> bool {
    netns_list()
        .lines()
        .any(|line| line.split_whitespace().next() == Some(name))
}

fn thread_netns() -> std::path::PathBuf {
    fs::read_link("/proc/thread-self/ns/net").unwrap()
}

/// Accepts one connection within TIMEOUT, reads a line, answers `pong <line>`.
fn serve_once(listener: TcpListener) -> io::Result<String> {
    listener.set_nonblocking(true)?;
    let mut accepted = None;
    wait_until(TIMEOUT, || match listener.accept() {
        Err(err) if err.kind() == io::ErrorKind::WouldBlock => false,
        result => {
            accepted = Some(result);
            true
        }
    });
    let (mut conn, _) = accepted.unwrap_or_else(|| Err(io::ErrorKind::TimedOut.into()))?;
    conn.set_read_timeout(Some(TIMEOUT))?;
    let mut line = String::new();
    BufReader::new(&conn).read_line(&mut line)?;
    conn.write_all(format!("pong {line}").as_bytes())?;
    Ok(line)
}

fn request(server: SocketAddr) -> io::Result<String> {
    let mut conn = TcpStream::connect_timeout(&server, TIMEOUT)?;
    conn.set_read_timeout(Some(TIMEOUT))?;
    conn.write_all(b"ping\n")?;
    let mut reply = String::new();
    conn.read_to_string(&mut reply)?;
    Ok(reply)
}

#[test]
fn tcp_exchange_between_namespaces() {
    let tb = testbed();
    let (a, b) = pair(&tb);
    let own_netns = thread_netns();

    let (ready_tx, ready_rx) = mpsc::channel();
    let (served, reply) = thread::scope(|scope| {
        let server = scope.spawn(|| {
            tb.in_ns(&a, move || {
                let listener = TcpListener::bind("10.213.7.1:0")?;
                ready_tx.send(listener.local_addr()?).unwrap();
                serve_once(listener)
            })
        });
        let addr = match ready_rx.recv_timeout(TIMEOUT) {
            Ok(addr) => addr,
            Err(err) => panic!("server not listening ({err}): {:?}", server.join()),
        };
        let reply = tb.in_ns(&b, || request(addr)).unwrap();
        (server.join().unwrap().unwrap(), reply)
    });
    assert_eq!(served.unwrap(), "ping\n");
    assert_eq!(reply.unwrap(), "pong ping\n");

    assert_eq!(thread_netns(), own_netns, "caller thread changed namespace");
    assert_ne!(tb.in_ns(&a, thread_netns).unwrap(), own_netns);
    let root = Command::new("ip")
        .args(["-o", "addr", "show", "to", "10.213.7.0/24"])
        .output()
        .unwrap();
    assert!(
        root.stdout.is_empty(),
        "testbed address in root namespace: {root:?}"
    );
}

#[test]
fn commands_run_inside_the_namespace() {
    let tb = testbed();
    let (a, b) = pair(&tb);

    tb.sysctl(&a, "net.ipv4.ip_forward", "1").unwrap();
    let forward = tb
        .exec(&a, "cat", &["/proc/sys/net/ipv4/ip_forward"])
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&forward.stdout).trim(), "1");

    tb.route(&b, "10.213.8.0/24 via 10.213.7.1").unwrap();
    let routes = tb
        .exec(&b, "ip", &["route", "show", "10.213.8.0/24"])
        .unwrap();
    assert!(
        String::from_utf8_lossy(&routes.stdout).contains("via 10.213.7.1"),
        "{routes:?}"
    );

    let ifindex = tb.ifindex(&a, "veth-a").unwrap();
    let sysfs = tb
        .exec(&a, "cat", &["/sys/class/net/veth-a/ifindex"])
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&sysfs.stdout).trim(),
        ifindex.to_string()
    );

    let failed = tb.exec(&a, "false", &[]).unwrap();
    assert!(
        !failed.status.success(),
        "exit status must be passed through"
    );
}

#[test]
fn names_are_unique_and_everything_goes_on_drop() {
    let (tb1, tb2) = (testbed(), testbed());
    let (ns1, ns2) = (tb1.add_ns("host").unwrap(), tb2.add_ns("host").unwrap());
    assert_ne!(ns1.name(), ns2.name());
    assert!(listed(ns1.name()) && listed(ns2.name()), "{}", netns_list());
    let mut server = tb1.spawn(&ns1, "sleep", &["60"]).unwrap();
    assert!(
        server.try_wait().unwrap().is_none(),
        "spawned child exited early"
    );

    drop(tb1);
    assert!(!listed(ns1.name()), "{} left behind", ns1.name());
    assert!(
        listed(ns2.name()),
        "dropping one testbed removed another's namespace"
    );
    assert!(
        wait_until(TIMEOUT, || server.try_wait().unwrap().is_some()),
        "spawned child survived drop"
    );
    drop(tb2);
    assert!(!listed(ns2.name()), "{} left behind", ns2.name());

    let mut created = None;
    let unwound = panic::catch_unwind(AssertUnwindSafe(|| {
        let tb = testbed();
        created = Some(tb.add_ns("doomed").unwrap());
        panic!("test failure while a testbed is alive");
    }));
    assert!(unwound.is_err());
    let doomed = created.unwrap();
    assert!(!listed(doomed.name()), "{} survived a panic", doomed.name());
}

/// Builds a namespace name the way a testbed of process `pid` would.
fn name_owned_by(pid: u32, counter: &str, name: &str) -> String {
    let mut digits = Vec::new();
    let mut n = pid;
    while n > 0 || digits.is_empty() {
        digits.push(char::from_digit(n % 36, 36).unwrap());
        n /= 36;
    }
    let pid36: String = digits.iter().rev().collect();
    format!("xl{pid36:0>5}{counter}-{name}")
}

#[test]
fn leftovers_of_dead_runs_only_are_removed() {
    need_root();
    let mut exited = Command::new("true").spawn().unwrap();
    exited.wait().unwrap();
    let dead = name_owned_by(exited.id(), "0", "leftover");
    // A counter no testbed of this process reaches, standing in for a live run.
    let live = name_owned_by(std::process::id(), "zzzz", "live");
    for name in [&dead, &live] {
        let out = Command::new("ip")
            .args(["netns", "add", name])
            .output()
            .unwrap();
        assert!(out.status.success(), "ip netns add {name}: {out:?}");
    }

    let tb = testbed();
    let (dead_left, live_left) = (listed(&dead), listed(&live));
    drop(tb);
    Command::new("ip")
        .args(["netns", "del", &live])
        .output()
        .unwrap();
    assert!(
        !dead_left,
        "leftover of dead pid {} not removed",
        exited.id()
    );
    assert!(live_left, "namespace of a live process was removed");
}
