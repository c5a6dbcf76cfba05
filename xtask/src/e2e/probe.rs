//! The client side of `e2e-probe server`: requests from the calling
//! thread's network namespace, each bounded in time, each reporting the
//! source address it used so a failure can be looked up with
//! `xdplb explain`.
use std::{
    fmt,
    io::{BufRead, BufReader, ErrorKind, Read, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use socket2::{Domain, Protocol, Socket, Type};

/// A SYN-ACK takes well under a millisecond here; a second means none is
/// coming.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);
const UDP_TRIES: usize = 3;
/// A bulk transfer that stalls this long is lost, not slow.
const BULK_STALL: Duration = Duration::from_secs(3);
const BULK_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// What a probe server answered: which pod, on which of its ports, and the
/// address it saw the request come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Who {
    pub pod: String,
    pub proto: String,
    pub peer: SocketAddr,
    pub port: u16,
}

impl fmt::Display for Who {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} on {}/{} saw {}",
            self.pod, self.port, self.proto, self.peer
        )
    }
}

impl Who {
    /// Parses `pod=<name> proto=<p> peer=<ip:port> port=<n>` (extra fields
    /// are ignored).
    pub fn parse(line: &str) -> Result<Self> {
        let field = |key: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
                .with_context(|| format!("no {key}= in the answer {line:?}"))
        };
        Ok(Self {
            pod: field("pod")?.to_owned(),
            proto: field("proto")?.to_owned(),
            peer: field("peer")?
                .parse()
                .with_context(|| format!("peer in {line:?}"))?,
            port: field("port")?
                .parse()
                .with_context(|| format!("port in {line:?}"))?,
        })
    }
}

/// A request's outcome and the local address it was sent from.
pub struct Attempt<T> {
    pub source: SocketAddr,
    pub took: Duration,
    pub result: Result<T>,
}

/// A socket of `target`'s family.
fn bound_socket(proto: Proto, target: SocketAddr) -> Result<(Socket, SocketAddr)> {
    let (domain, any) = match target {
        SocketAddr::V4(_) => (Domain::IPV4, IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        SocketAddr::V6(_) => (Domain::IPV6, IpAddr::V6(Ipv6Addr::UNSPECIFIED)),
    };
    let socket = match proto {
        Proto::Tcp => Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?,
        Proto::Udp => Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?,
    };
    // Bound first so the source port is known even when nothing answers.
    socket.bind(&SocketAddr::new(any, 0).into())?;
    let local = socket
        .local_addr()?
        .as_socket()
        .context("local address is not IP")?;
    Ok((socket, local))
}

/// One `WHO` to `target`, on a new connection (TCP) or socket (UDP). A UDP
/// socket is connected, so only a reply from `target` itself counts: one
/// the data plane failed to translate back is not taken.
pub fn who(target: SocketAddr, proto: Proto) -> Result<Attempt<Who>> {
    attempt(proto, target, |socket| match proto {
        Proto::Tcp => who_tcp(socket, target),
        Proto::Udp => who_udp(socket, target),
    })
}

/// `request` on a new socket of `proto` for `target`, timed.
fn attempt<T>(
    proto: Proto,
    target: SocketAddr,
    request: impl FnOnce(Socket) -> Result<T>,
) -> Result<Attempt<T>> {
    let (socket, source) = bound_socket(proto, target)?;
    let started = Instant::now();
    let result = request(socket);
    Ok(Attempt {
        source,
        took: started.elapsed(),
        result,
    })
}

fn who_tcp(socket: Socket, target: SocketAddr) -> Result<Who> {
    socket
        .connect_timeout(&target.into(), CONNECT_TIMEOUT)
        .with_context(|| format!("connecting to {target}"))?;
    let stream = TcpStream::from(socket);
    ask(&stream).with_context(|| format!("asking {target}"))
}

fn ask(stream: &TcpStream) -> Result<Who> {
    stream.set_read_timeout(Some(ANSWER_TIMEOUT))?;
    let mut out = stream;
    out.write_all(b"WHO\n")?;
    let mut line = String::new();
    // One byte at a time: the stream is reused, nothing may stay buffered.
    let mut byte = [0u8; 1];
    while !line.ends_with('\n') {
        let mut input = stream;
        match input.read(&mut byte)? {
            0 => bail!("the connection closed after {line:?}"),
            _ => line.push(char::from(byte[0])),
        }
    }
    Who::parse(line.trim_end())
}

fn who_udp(socket: Socket, target: SocketAddr) -> Result<Who> {
    let mut buf = [0u8; 1500];
    match udp_tries(socket, target, &mut buf)?.1 {
        Some(Ok(n)) => Who::parse(String::from_utf8_lossy(&buf[..n]).trim_end()),
        Some(Err(err)) => Err(err).with_context(|| format!("asking {target} over UDP")),
        None => bail!(
            "no UDP answer from {target} in {UDP_TRIES} tries of {} s",
            CONNECT_TIMEOUT.as_secs()
        ),
    }
}

/// Connects `socket` to `target` and sends `WHO` until a receive into
/// `buf` gives an answer or an error (`None`: every try timed out).
fn udp_tries(
    socket: Socket,
    target: SocketAddr,
    buf: &mut [u8],
) -> Result<(UdpSocket, Option<std::io::Result<usize>>)> {
    let socket = UdpSocket::from(socket);
    socket.connect(target)?;
    socket.set_read_timeout(Some(CONNECT_TIMEOUT))?;
    for _ in 0..UDP_TRIES {
        socket.send(b"WHO")?;
        match socket.recv(buf) {
            Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            outcome => return Ok((socket, Some(outcome))),
        }
    }
    Ok((socket, None))
}

/// A request that must be refused: the error it got, which must be
/// "connection refused" (a TCP RST, or for UDP an ICMP port unreachable).
pub fn refusal(target: SocketAddr, proto: Proto) -> Result<Attempt<()>> {
    let (socket, source) = bound_socket(proto, target)?;
    let started = Instant::now();
    let outcome = match proto {
        Proto::Tcp => socket
            .connect_timeout(&target.into(), CONNECT_TIMEOUT)
            .map(drop),
        Proto::Udp => {
            let socket = UdpSocket::from(socket);
            socket.set_read_timeout(Some(CONNECT_TIMEOUT))?;
            let mut buf = [0u8; 1500];
            // Socket-level translation refuses at connect, the packet path
            // by an ICMP error that the receive reports.
            socket
                .connect(target)
                .and_then(|()| socket.send(b"WHO"))
                .and_then(|_| socket.recv(&mut buf))
                .map(drop)
        }
    };
    let took = started.elapsed();
    let result = match outcome {
        Ok(()) => Err(anyhow::anyhow!(
            "{target}/{proto} answered; it should refuse"
        )),
        Err(err) if err.kind() == ErrorKind::ConnectionRefused => Ok(()),
        Err(err) => Err(anyhow::anyhow!(
            "{target}/{proto}: {err} after {:.0} ms, not \"connection refused\"",
            took.as_secs_f64() * 1e3
        )),
    };
    Ok(Attempt {
        source,
        took,
        result,
    })
}

/// A UDP datagram to `target` that has `hops` routers to live: the address
/// of the router that answered it with time exceeded, read from the
/// socket's error queue as traceroute reads it.
pub fn ttl_expiry(target: SocketAddr, hops: u32) -> Result<Attempt<IpAddr>> {
    attempt(Proto::Udp, target, |socket| expire(socket, target, hops))
}

fn expire(socket: Socket, target: SocketAddr, hops: u32) -> Result<IpAddr> {
    let (level, recverr) = match target {
        SocketAddr::V4(_) => {
            socket.set_ttl_v4(hops)?;
            (libc::IPPROTO_IP, libc::IP_RECVERR)
        }
        SocketAddr::V6(_) => {
            socket.set_unicast_hops_v6(hops)?;
            (libc::IPPROTO_IPV6, libc::IPV6_RECVERR)
        }
    };
    // Without it a UDP socket drops time exceeded, which is no hard error.
    set_int_option(&socket, level, recverr, 1)?;
    let mut buf = [0u8; 1500];
    match udp_tries(socket, target, &mut buf)? {
        (_, Some(Ok(_))) => bail!("{target} answered a datagram with {hops} hops to live"),
        (socket, Some(Err(_))) => offender(&socket, level, recverr),
        (_, None) => bail!(
            "no time exceeded about {target} with {hops} hops to live in {UDP_TRIES} tries of {} s",
            CONNECT_TIMEOUT.as_secs()
        ),
    }
}

fn set_int_option(socket: &Socket, level: i32, name: i32, value: i32) -> Result<()> {
    // SAFETY: an int option of the socket's own descriptor.
    let rc = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(socket),
            level,
            name,
            (&raw const value).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    ensure!(rc == 0, "setsockopt: {}", std::io::Error::last_os_error());
    Ok(())
}

/// The router an ICMP time exceeded in `socket`'s error queue came from.
/// By hand: neither std nor socket2 reads the error queue.
fn offender(socket: &UdpSocket, level: i32, recverr: i32) -> Result<IpAddr> {
    let mut data = [0u8; 64];
    let mut control = [0u64; 64];
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: data.len(),
    };
    // SAFETY: a zeroed msghdr is valid; the pointers set below outlive the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control);
    let fd = std::os::fd::AsRawFd::as_raw_fd(socket);
    // SAFETY: `msg` describes buffers owned by this frame.
    let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_ERRQUEUE) };
    ensure!(
        n >= 0,
        "reading the error queue: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: the kernel filled `control` with `msg_controllen` bytes of
    // well-formed cmsgs, which these macros walk within.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    while !cmsg.is_null() {
        let (c_level, c_type) = unsafe { ((*cmsg).cmsg_level, (*cmsg).cmsg_type) };
        if (c_level, c_type) == (level, recverr) {
            // SAFETY: an IP(V6)_RECVERR cmsg holds a sock_extended_err and,
            // behind it, the offender's address.
            let (err, from) = unsafe {
                let err = libc::CMSG_DATA(cmsg).cast::<libc::sock_extended_err>();
                (err.read_unaligned(), err.add(1).cast::<u8>())
            };
            let time_exceeded = match err.ee_origin {
                libc::SO_EE_ORIGIN_ICMP => err.ee_type == 11,
                libc::SO_EE_ORIGIN_ICMP6 => err.ee_type == 3,
                _ => false,
            };
            ensure!(
                time_exceeded,
                "the error queue holds origin {} type {} code {}, not time exceeded",
                err.ee_origin,
                err.ee_type,
                err.ee_code
            );
            // SAFETY: the offender is a sockaddr_in or sockaddr_in6, by its
            // family.
            return unsafe {
                match from.cast::<libc::sa_family_t>().read_unaligned() as i32 {
                    libc::AF_INET => {
                        let a = from.cast::<libc::sockaddr_in>().read_unaligned();
                        Ok(IpAddr::V4(Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr))))
                    }
                    libc::AF_INET6 => {
                        let a = from.cast::<libc::sockaddr_in6>().read_unaligned();
                        Ok(IpAddr::V6(Ipv6Addr::from(a.sin6_addr.s6_addr)))
                    }
                    family => Err(anyhow::anyhow!(
                        "time exceeded from address family {family}"
                    )),
                }
            };
        }
        cmsg = unsafe { libc::CMSG_NXTHDR(&msg, cmsg) };
    }
    bail!("no error in the error queue")
}

/// Fetches `size` bytes of the server's pattern from `target` and checks
/// every byte.
pub fn bulk(target: SocketAddr, size: usize) -> Result<Attempt<Duration>> {
    attempt(Proto::Tcp, target, |socket| {
        fetch(socket, target, size, Instant::now())
    })
}

/// Sends `size` bytes of the pattern to `target`; the pod that checked them.
pub fn upload(target: SocketAddr, size: usize) -> Result<Attempt<String>> {
    attempt(Proto::Tcp, target, |socket| {
        send_pattern(socket, target, size)
    })
}

fn send_pattern(socket: Socket, target: SocketAddr, size: usize) -> Result<String> {
    socket
        .connect_timeout(&target.into(), CONNECT_TIMEOUT)
        .with_context(|| format!("connecting to {target}"))?;
    let mut stream = TcpStream::from(socket);
    stream.set_read_timeout(Some(BULK_STALL))?;
    stream.set_write_timeout(Some(BULK_STALL))?;
    writeln!(stream, "UPLOAD {size}")?;
    let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    stream
        .write_all(&data)
        .context("the upload stalled (no ACK for the data)")?;
    let mut answer = String::new();
    BufReader::new(&stream)
        .read_line(&mut answer)
        .context("no answer after the upload: the data never all arrived")?;
    let pod = answer
        .trim()
        .strip_prefix(&format!("OK {size} pod="))
        .with_context(|| format!("the server answered {:?}", answer.trim()))?;
    Ok(pod.to_string())
}

fn fetch(socket: Socket, target: SocketAddr, size: usize, started: Instant) -> Result<Duration> {
    socket
        .connect_timeout(&target.into(), CONNECT_TIMEOUT)
        .with_context(|| format!("connecting to {target}"))?;
    let mut stream = TcpStream::from(socket);
    stream.set_read_timeout(Some(BULK_STALL))?;
    writeln!(stream, "BULK {size}")?;
    let mut got = 0usize;
    let mut buf = vec![0u8; 64 << 10];
    loop {
        ensure!(
            started.elapsed() < BULK_TIMEOUT,
            "{got} of {size} bytes after {} s",
            BULK_TIMEOUT.as_secs()
        );
        let n = match stream.read(&mut buf) {
            Ok(n) => n,
            Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                bail!(
                    "the transfer stalled: {got} of {size} bytes, then nothing for {} s",
                    BULK_STALL.as_secs()
                )
            }
            Err(err) => return Err(err).context(format!("{got} of {size} bytes, then")),
        };
        if n == 0 {
            break;
        }
        if let Some(i) = buf[..n]
            .iter()
            .enumerate()
            .position(|(i, b)| *b != (((got + i) % 251) as u8))
        {
            bail!("byte {} of the transfer is wrong", got + i);
        }
        got += n;
    }
    ensure!(
        got == size,
        "the connection closed after {got} of {size} bytes"
    );
    Ok(started.elapsed())
}

/// A connection kept open across a scenario; every exchange on it must be
/// answered by the same pod, seeing the same peer, as the first.
pub struct Conn {
    stream: TcpStream,
    pub source: SocketAddr,
    pub target: SocketAddr,
    pub first: Who,
    pub exchanges: usize,
}

impl Conn {
    pub fn open(target: SocketAddr) -> Result<Self> {
        let (socket, _) = bound_socket(Proto::Tcp, target)?;
        socket
            .connect_timeout(&target.into(), CONNECT_TIMEOUT)
            .with_context(|| format!("connecting to {target}"))?;
        let stream = TcpStream::from(socket);
        let source = stream.local_addr()?;
        let first = ask(&stream).with_context(|| format!("asking {target}"))?;
        Ok(Self {
            stream,
            source,
            target,
            first,
            exchanges: 1,
        })
    }

    /// One more exchange; fails if it is not answered as the first was.
    pub fn check(&mut self) -> Result<()> {
        let who = ask(&self.stream).with_context(|| {
            format!(
                "exchange {} on the connection {} -> {} (first answered by {})",
                self.exchanges + 1,
                self.source,
                self.target,
                self.first
            )
        })?;
        ensure!(
            who == self.first,
            "exchange {} on {} -> {} answered by {who}, the first by {}",
            self.exchanges + 1,
            self.source,
            self.target,
            self.first
        );
        self.exchanges += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_parse() {
        let who = Who::parse("pod=web-1 proto=tcp peer=10.244.1.5:40000 port=8080").unwrap();
        assert_eq!(who.pod, "web-1");
        assert_eq!(who.peer, "10.244.1.5:40000".parse().unwrap());
        assert_eq!(who.port, 8080);
        let udp = Who::parse("pod=web-2 proto=udp peer=10.244.1.5:1 port=8054 from=10.96.0.20:53")
            .unwrap();
        assert_eq!(udp.proto, "udp");
        let v6 = Who::parse("pod=web-1 proto=tcp peer=[fd00:244:1::4]:40000 port=8080").unwrap();
        assert_eq!(v6.peer, "[fd00:244:1::4]:40000".parse().unwrap());
        assert!(Who::parse("ERROR connecting").is_err());
    }
}
