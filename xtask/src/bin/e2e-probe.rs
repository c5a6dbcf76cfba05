//! The end-to-end suite's small network program (`cargo xtask e2e`), std
//! only.
//!
//! `e2e-probe server --pod NAME` runs in a pod and listens on TCP ports
//! 8080, 8081, 8083 and 8053 and UDP ports 8080 and 8054, over IPv4 and
//! IPv6. Over TCP it
//! answers lines: `WHO` with one line saying who answered and whom it saw,
//! `BULK <bytes>` with that many bytes of a known pattern, then it closes;
//! `UPLOAD <bytes>` reads that many bytes of the pattern, checks each, and
//! answers `OK <bytes> pod=<name>` (or `BAD <offset>`).
//! A UDP datagram `WHO` gets the same line back. The line is
//! `pod=<name> proto=<tcp|udp> peer=<ip:port> port=<local port>`, so a test
//! sees which pod a Service chose, which target port it reached and which
//! source address the data plane left on the packet.
//!
//! `e2e-probe who tcp|udp ADDR:PORT COUNT` is the client a node's own
//! processes run: COUNT requests, each on a new connection (or socket),
//! one answer line each, `ERROR <what>` for a request that got none. UDP
//! replies carry ` from=<ip:port>`, the source address the socket saw. It
//! exits non-zero if any request failed.
use std::{
    env,
    io::{self, BufRead, BufReader, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    process::ExitCode,
    thread,
    time::Duration,
};

/// The TCP ports, the readiness port (8080) first; it is bound last so
/// that a connection to it means every port listens.
const TCP_PORTS: [u16; 4] = [8080, 8081, 8083, 8053];
const UDP_PORTS: [u16; 2] = [8080, 8054];
/// A long-lived test connection may sit idle between its exchanges for as
/// long as a scenario takes (an agent restart, say).
const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
const CLIENT_TIMEOUT: Duration = Duration::from_secs(1);
const UDP_TRIES: usize = 3;
/// `BULK` answers at most this much.
const MAX_BULK: usize = 64 << 20;

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["server", "--pod", pod] => server(pod),
        ["who", proto, target, count] => who(proto, target, count),
        _ => Err(io::Error::other(
            "usage: e2e-probe server --pod NAME | e2e-probe who tcp|udp ADDR:PORT COUNT",
        )),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("e2e-probe: {err}");
            ExitCode::FAILURE
        }
    }
}

/// The byte at `offset` of a `BULK` answer.
fn pattern(offset: usize) -> u8 {
    (offset % 251) as u8
}

fn server(pod: &str) -> io::Result<()> {
    let pod: &'static str = Box::leak(pod.to_owned().into_boxed_str());
    // `::` takes both families on one socket (net.ipv6.bindv6only=0, the
    // distributions' default), as the counter app does.
    for port in UDP_PORTS {
        let socket = UdpSocket::bind(("::", port))
            .map_err(|e| io::Error::other(format!("UDP port {port}: {e}")))?;
        thread::spawn(move || serve_udp(pod, socket));
    }
    let mut listeners = Vec::new();
    for port in TCP_PORTS.iter().rev() {
        let listener = TcpListener::bind(("::", *port))
            .map_err(|e| io::Error::other(format!("TCP port {port}: {e}")))?;
        listeners.push(listener);
    }
    eprintln!("e2e-probe: pod {pod} listening on TCP {TCP_PORTS:?} and UDP {UDP_PORTS:?}");
    let mut threads = Vec::new();
    for listener in listeners {
        threads.push(thread::spawn(move || {
            for stream in listener.incoming() {
                match stream {
                    Ok(stream) => {
                        thread::spawn(move || {
                            if let Err(err) = serve_tcp(pod, stream) {
                                eprintln!("e2e-probe: {err}");
                            }
                        });
                    }
                    Err(err) => eprintln!("e2e-probe: accept: {err}"),
                }
            }
        }));
    }
    for thread in threads {
        let _ = thread.join();
    }
    Ok(())
}

/// An IPv4 peer of a dual-stack socket shows as `::ffff:a.b.c.d`; the
/// line gives it as the IPv4 address it is.
fn who_line(pod: &str, proto: &str, peer: SocketAddr, port: u16) -> String {
    let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
    format!("pod={pod} proto={proto} peer={peer} port={port}\n")
}

fn serve_tcp(pod: &str, stream: TcpStream) -> io::Result<()> {
    stream.set_read_timeout(Some(IDLE_TIMEOUT))?;
    stream.set_write_timeout(Some(IDLE_TIMEOUT))?;
    let peer = stream.peer_addr()?;
    let port = stream.local_addr()?.port();
    let mut reader = BufReader::new(&stream);
    let mut out = &stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("WHO"), None) => out.write_all(who_line(pod, "tcp", peer, port).as_bytes())?,
            (Some("BULK"), Some(n)) => {
                let n = size("BULK", n)?;
                let mut sent = 0;
                let mut chunk = vec![0u8; 16 << 10];
                while sent < n {
                    let len = chunk.len().min(n - sent);
                    for (i, byte) in chunk[..len].iter_mut().enumerate() {
                        *byte = pattern(sent + i);
                    }
                    out.write_all(&chunk[..len])?;
                    sent += len;
                }
                return Ok(());
            }
            (Some("UPLOAD"), Some(n)) => {
                let n = size("UPLOAD", n)?;
                let answer = match receive_pattern(&mut reader, n)? {
                    None => format!("OK {n} pod={pod}\n"),
                    Some(offset) => format!("BAD {offset}\n"),
                };
                out.write_all(answer.as_bytes())?;
                return Ok(());
            }
            _ => out.write_all(b"ERR unknown request\n")?,
        }
    }
}

/// The byte count of a `BULK` or `UPLOAD` request, at most `MAX_BULK`.
fn size(request: &str, n: &str) -> io::Result<usize> {
    n.parse()
        .ok()
        .filter(|n| *n <= MAX_BULK)
        .ok_or_else(|| io::Error::other(format!("bad {request} size {n:?}")))
}

/// Reads `n` bytes of the pattern; the offset of the first wrong byte, if any.
fn receive_pattern(reader: &mut impl io::Read, n: usize) -> io::Result<Option<usize>> {
    let mut got = 0;
    let mut buf = vec![0u8; 16 << 10];
    while got < n {
        let len = buf.len().min(n - got);
        let read = reader.read(&mut buf[..len])?;
        if read == 0 {
            return Err(io::Error::other(format!(
                "upload ended after {got} of {n} bytes"
            )));
        }
        if let Some(i) = (0..read).find(|i| buf[*i] != pattern(got + i)) {
            return Ok(Some(got + i));
        }
        got += read;
    }
    Ok(None)
}

fn serve_udp(pod: &str, socket: UdpSocket) {
    let port = socket.local_addr().map_or(0, |a| a.port());
    let mut buf = [0u8; 1500];
    loop {
        match socket.recv_from(&mut buf) {
            Ok((n, peer)) if buf[..n].trim_ascii() == b"WHO" => {
                let _ = socket.send_to(who_line(pod, "udp", peer, port).as_bytes(), peer);
            }
            Ok(_) => {}
            Err(err) => eprintln!("e2e-probe: UDP port {port}: {err}"),
        }
    }
}

fn who(proto: &str, target: &str, count: &str) -> io::Result<()> {
    let target: SocketAddr = target
        .parse()
        .map_err(|_| io::Error::other(format!("bad address {target:?}")))?;
    let count: usize = count
        .parse()
        .map_err(|_| io::Error::other(format!("bad count {count:?}")))?;
    let ask = match proto {
        "tcp" => who_tcp,
        "udp" => who_udp,
        _ => return Err(io::Error::other(format!("bad protocol {proto:?}"))),
    };
    let mut failed = 0;
    for _ in 0..count {
        match ask(target) {
            Ok(line) => println!("{line}"),
            Err(err) => {
                failed += 1;
                println!("ERROR {err}");
            }
        }
    }
    if failed > 0 {
        return Err(io::Error::other(format!(
            "{failed} of {count} requests failed"
        )));
    }
    Ok(())
}

fn who_tcp(target: SocketAddr) -> io::Result<String> {
    let stream = TcpStream::connect_timeout(&target, CLIENT_TIMEOUT)
        .map_err(|e| io::Error::other(format!("connecting to {target}: {e}")))?;
    stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    (&stream).write_all(b"WHO\n")?;
    let mut line = String::new();
    BufReader::new(&stream)
        .read_line(&mut line)
        .map_err(|e| io::Error::other(format!("reading from {target}: {e}")))?;
    Ok(line.trim_end().to_owned())
}

/// An unconnected socket, so the source address of the reply is the one
/// the socket layer reports, not one a connected socket filters on.
fn who_udp(target: SocketAddr) -> io::Result<String> {
    let any = match target {
        SocketAddr::V4(_) => "0.0.0.0",
        SocketAddr::V6(_) => "::",
    };
    let socket = UdpSocket::bind((any, 0))?;
    socket.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    let mut buf = [0u8; 1500];
    let mut last = None;
    for _ in 0..UDP_TRIES {
        socket.send_to(b"WHO", target)?;
        match socket.recv_from(&mut buf) {
            Ok((n, from)) => {
                let line = String::from_utf8_lossy(&buf[..n]);
                return Ok(format!("{} from={from}", line.trim_end()));
            }
            Err(err) => last = Some(err),
        }
    }
    Err(io::Error::other(format!(
        "no UDP answer from {target} in {UDP_TRIES} tries: {}",
        last.map_or_else(String::new, |e| e.to_string())
    )))
}
