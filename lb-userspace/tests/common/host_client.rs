//! Clients of the socket programs: python3 processes that join a network
//! namespace and a cgroup before they start, so the cgroup's programs see
//! every socket they open. Shared by the host-client tests of both address
//! families.
use std::fs::{File, OpenOptions};
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use testbed::netns::Ns;

use super::cgroup::Cgroup;

/// One client connection or exchange; every byte is printable ASCII, as
/// the client takes it on its command line.
pub struct Op {
    pub kind: &'static str,
    pub dst: SocketAddr,
    pub request: String,
}

/// Runs each `kind dst request` of its arguments in turn and prints one
/// line per exchange: `ok <ms> <source> <reply>` or `err <ms> <errno
/// name>`, the source being the UDP reply's, or the TCP socket's peer as
/// `getpeername()` names it, written as Rust writes a `SocketAddr`. `udp`
/// is a connected socket, `udpto` an unconnected one; each of the family
/// of its destination (IPv6 ones, IPv4-mapped included, AF_INET6).
pub const CLIENT: &str = r#"
import errno, socket, sys, time

TIMEOUT = 3.0

def family(host):
    return socket.AF_INET6 if ":" in host else socket.AF_INET

def name(sa):
    return ("[%s]:%d" if ":" in sa[0] else "%s:%d") % sa[:2]

def tcp(dst, request):
    with socket.socket(family(dst[0]), socket.SOCK_STREAM) as s:
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
    with socket.socket(family(dst[0]), socket.SOCK_DGRAM) as s:
        s.settimeout(TIMEOUT)
        s.connect(dst)
        s.send(request)
        answer, source = s.recvfrom(65536)
        return source, answer

def udpto(dst, request):
    with socket.socket(family(dst[0]), socket.SOCK_DGRAM) as s:
        s.settimeout(TIMEOUT)
        s.sendto(request, dst)
        answer, source = s.recvfrom(65536)
        return source, answer

args = sys.argv[1:]
for i in range(0, len(args), 4):
    kind, host, port, request = args[i:i + 4]
    start = time.monotonic()
    try:
        source, answer = globals()[kind]((host, int(port)), request.encode())
        out = ["ok", name(source), answer.decode()]
    except TimeoutError:
        out = ["err", "timeout"]
    except OSError as e:
        out = ["err", errno.errorcode.get(e.errno, str(e))]
    ms = "%.1f" % ((time.monotonic() - start) * 1000)
    print("\t".join([out[0], ms] + out[1:]), flush=True)
"#;

#[derive(Debug)]
pub struct Outcome {
    pub ms: f64,
    /// `(source, reply)`, the source as `CLIENT` prints it; or the errno's name.
    pub result: Result<(String, String), String>,
}

/// Runs `ops` in one client process in namespace `ns`, inside `cgroup` if
/// given.
pub fn run_in_ns(ns: &Ns, cgroup: Option<&Cgroup>, ops: &[Op]) -> Vec<Outcome> {
    let netns_path = Path::new("/run/netns").join(ns.name());
    let netns = File::open(&netns_path).expect("opening the namespace");
    let procs = cgroup.map(|cgroup| {
        OpenOptions::new()
            .write(true)
            .open(cgroup.dir().join("cgroup.procs"))
            .expect("opening cgroup.procs")
    });
    let mut cmd = Command::new("timeout");
    cmd.args(["--kill-after=5", "60", "python3", "-c", CLIENT]);
    for op in ops {
        cmd.arg(op.kind)
            .arg(op.dst.ip().to_string())
            .arg(op.dst.port().to_string())
            .arg(&op.request);
    }
    let (netns_fd, procs_fd) = (netns.as_raw_fd(), procs.as_ref().map(File::as_raw_fd));
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
    let outcomes: Vec<Outcome> = stdout.lines().map(parse).collect();
    assert_eq!(outcomes.len(), ops.len(), "client output: {stdout}");
    outcomes
}

/// In the child between fork and exec: joins the cgroup first, so every
/// socket the client opens belongs to it, then the namespace.
pub fn enter(netns: RawFd, cgroup_procs: Option<RawFd>) -> io::Result<()> {
    // "0" moves the writing process itself.
    if let Some(fd) = cgroup_procs {
        // SAFETY: plain write(2) of a static buffer.
        if unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) } != 1 {
            return Err(io::Error::last_os_error());
        }
    }
    // SAFETY: plain setns(2) on a namespace descriptor.
    if unsafe { libc::setns(netns, libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn parse(line: &str) -> Outcome {
    let fields: Vec<&str> = line.splitn(4, '\t').collect();
    let ms = fields
        .get(1)
        .and_then(|ms| ms.parse().ok())
        .unwrap_or_else(|| panic!("unexpected client line {line:?}"));
    let result = match fields[..] {
        ["ok", _, source, answer] => Ok((source.to_string(), answer.to_string())),
        ["err", _, errno] => Err(errno.to_string()),
        _ => panic!("unexpected client line {line:?}"),
    };
    Outcome { ms, result }
}
