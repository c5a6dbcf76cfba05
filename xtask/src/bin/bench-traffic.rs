//! The traffic generator and sink of `cargo xtask bench --testbed`, std and
//! libc only.
//!
//! `bench-traffic sink ADDR:PORT SECS` binds UDP ADDR:PORT, prints `ready`,
//! and once the first datagram arrives lets WARMUP pass, then counts for
//! SECS; it prints `<counted> <seconds counted> <received in all>`.
//!
//! `bench-traffic flows ADDR:PORT FLOWS SECS` sends from FLOWS connected UDP
//! sockets as fast as it can for SECS; `bench-traffic new-flows ADDR:PORT
//! FIRST_SRC SRC_COUNT SECS` sends raw UDP datagrams (IPv4 or IPv6, as ADDR
//! is) whose source (address, port) never repeats: addresses FIRST_SRC and
//! the SRC_COUNT - 1 after it, ports 1024-65535. Both print `<datagrams
//! sent>`.
use std::{
    env,
    io::{self, Write},
    mem,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket},
    os::fd::AsRawFd,
    process::ExitCode,
    time::{Duration, Instant},
};

/// Lets ARP, conntrack and caches settle before the window opens.
const WARMUP: Duration = Duration::from_millis(500);
/// A sink that sees nothing gives up this long after its window would end.
const FIRST_PACKET_WAIT: Duration = Duration::from_secs(5);
/// After the window the sink drains until the path is quiet this long, so
/// `received in all` counts what was still in flight.
const QUIET: Duration = Duration::from_millis(300);
const DRAIN_LIMIT: Duration = Duration::from_secs(3);
/// A send loop stops here even if the clock were to stall.
const MAX_DATAGRAMS: u64 = 200_000_000;
const BATCH: usize = 64;
/// 18 bytes of payload make a 60-byte frame, Ethernet's minimum.
const PAYLOAD: &[u8; 18] = b"xdplb-bench-testbd";
const FIRST_PORT: u16 = 1024;

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["sink", bind, secs] => sink(parse(bind), secs_arg(secs)),
        ["flows", dst, count, secs] => flows(parse(dst), parse(count), secs_arg(secs)),
        ["new-flows", dst, first, count, secs] => {
            new_flows(parse(dst), parse(first), parse(count), secs_arg(secs))
        }
        _ => Err(io::Error::other(
            "usage: bench-traffic sink ADDR:PORT SECS | flows ADDR:PORT FLOWS SECS | \
             new-flows ADDR:PORT FIRST_SRC SRC_COUNT SECS",
        )),
    };
    match result {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("bench-traffic: {err}");
            ExitCode::FAILURE
        }
    }
}

fn parse<T: std::str::FromStr>(arg: &str) -> T {
    arg.parse().unwrap_or_else(|_| {
        eprintln!("bench-traffic: bad argument {arg:?}");
        std::process::exit(2)
    })
}

fn secs_arg(arg: &str) -> Duration {
    Duration::from_secs_f64(parse(arg))
}

fn sink(bind: SocketAddr, window: Duration) -> io::Result<String> {
    let socket = UdpSocket::bind(bind)?;
    let fd = socket.as_raw_fd();
    // A burst the sink is slow to read must not count as lost on the path.
    setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, 64 << 20)?;
    socket.set_read_timeout(Some(Duration::from_millis(50)))?;
    println!("ready");
    io::stdout().flush()?;
    let mut bufs = [[0u8; 64]; BATCH];
    // `_iovs` stays bound: `msgs` points into it.
    let (_iovs, mut msgs) = batch(&mut bufs);
    let started = Instant::now();
    let (mut total, mut counted) = (0u64, 0u64);
    let mut first: Option<Instant> = None;
    let mut last_packet = started;
    loop {
        // SAFETY: msgs point into bufs and iovs, which outlive the call.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                msgs.as_mut_ptr(),
                BATCH as u32,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        let now = Instant::now();
        if n > 0 {
            let n = n as u64;
            total += n;
            last_packet = now;
            let first = *first.get_or_insert(now);
            let open = first + WARMUP;
            if now >= open && now < open + window {
                counted += n;
            }
        } else {
            let err = io::Error::last_os_error();
            if !matches!(
                err.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
            ) {
                return Err(err);
            }
        }
        match first {
            None if now > started + WARMUP + window + FIRST_PACKET_WAIT => break,
            Some(first) if now > first + WARMUP + window => {
                let drained = now > first + WARMUP + window + DRAIN_LIMIT;
                if drained || now > last_packet + QUIET {
                    break;
                }
            }
            _ => {}
        }
    }
    let secs = if first.is_some() {
        window.as_secs_f64()
    } else {
        0.0
    };
    Ok(format!("{counted} {secs} {total}"))
}

fn flows(dst: SocketAddr, flows: usize, secs: Duration) -> io::Result<String> {
    let any: IpAddr = match dst {
        SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        SocketAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    let sockets = (0..flows)
        .map(|_| {
            let s = UdpSocket::bind((any, 0))?;
            s.connect(dst)?;
            Ok(s)
        })
        .collect::<io::Result<Vec<_>>>()?;
    let mut iov = libc::iovec {
        iov_base: PAYLOAD.as_ptr() as *mut _,
        iov_len: PAYLOAD.len(),
    };
    // SAFETY: as in sink.
    let mut msgs: Vec<libc::mmsghdr> = (0..BATCH).map(|_| unsafe { mem::zeroed() }).collect();
    for msg in &mut msgs {
        msg.msg_hdr.msg_iov = &mut iov;
        msg.msg_hdr.msg_iovlen = 1;
    }
    let deadline = Instant::now() + secs;
    let mut sent = 0u64;
    'send: loop {
        for socket in &sockets {
            // SAFETY: msgs point at iov and PAYLOAD, which outlive the call;
            // the kernel only reads them.
            let n =
                unsafe { libc::sendmmsg(socket.as_raw_fd(), msgs.as_mut_ptr(), BATCH as u32, 0) };
            // Refusals (an ICMP error on the connected socket) and full
            // queues cost the datagrams, not the run.
            sent += u64::try_from(n).unwrap_or(0);
        }
        if Instant::now() >= deadline || sent >= MAX_DATAGRAMS {
            break 'send;
        }
    }
    Ok(sent.to_string())
}

fn new_flows(
    dst: SocketAddr,
    first_src: IpAddr,
    src_count: u32,
    secs: Duration,
) -> io::Result<String> {
    match (dst, first_src) {
        (SocketAddr::V4(dst), IpAddr::V4(first)) => send_new_flows(
            libc::AF_INET,
            None,
            sockaddr_v4(dst),
            |n, port, buf: &mut [u8; 46]| {
                let src = Ipv4Addr::from(u32::from(first) + n);
                datagram(buf, SocketAddrV4::new(src, port), dst);
            },
            src_count,
            secs,
        ),
        (SocketAddr::V6(dst), IpAddr::V6(first)) => send_new_flows(
            libc::AF_INET6,
            // Unbound, the kernel selects a source address for every
            // datagram (though the header carries its own) among the
            // sender's hundreds, and sends a tenth as many.
            Some(sockaddr_v6(SocketAddrV6::new(first, 0, 0, 0))),
            sockaddr_v6(dst),
            |n, port, buf: &mut [u8; 66]| {
                let src = Ipv6Addr::from(u128::from(first) + u128::from(n));
                datagram_v6(buf, SocketAddrV6::new(src, port, 0, 0), dst);
            },
            src_count,
            secs,
        ),
        _ => Err(io::Error::other(
            "the destination and the sources differ in family",
        )),
    }
}

fn sockaddr_v4(dst: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: dst.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*dst.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

/// For a raw IPv6 socket the port field names the protocol, and anything
/// but 0 or the socket's own is refused: it stays 0.
fn sockaddr_v6(dst: SocketAddrV6) -> libc::sockaddr_in6 {
    libc::sockaddr_in6 {
        sin6_family: libc::AF_INET6 as libc::sa_family_t,
        sin6_port: 0,
        sin6_flowinfo: 0,
        sin6_addr: libc::in6_addr {
            s6_addr: dst.ip().octets(),
        },
        sin6_scope_id: 0,
    }
}

/// Sends from a raw socket of `domain` (IPPROTO_RAW: the datagrams carry
/// their own IP header, in IPv6 too), bound to `from` if given, the
/// datagrams `fill` writes for (source address number, source port), each
/// pair once.
fn send_new_flows<To, const N: usize>(
    domain: i32,
    from: Option<To>,
    to: To,
    mut fill: impl FnMut(u32, u16, &mut [u8; N]),
    src_count: u32,
    secs: Duration,
) -> io::Result<String> {
    // SAFETY: plain syscall.
    let fd = unsafe { libc::socket(domain, libc::SOCK_RAW, libc::IPPROTO_RAW) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    if let Some(from) = from {
        // SAFETY: `from` is a socket address of `domain` of the size passed.
        let rc =
            unsafe { libc::bind(fd, (&from as *const To).cast(), mem::size_of::<To>() as u32) };
        if rc != 0 {
            let err = io::Error::last_os_error();
            // SAFETY: our descriptor, closed once.
            unsafe { libc::close(fd) };
            return Err(err);
        }
    }
    let max = u64::from(src_count) * u64::from(u16::MAX - FIRST_PORT + 1);
    let mut bufs = [[0u8; N]; BATCH];
    // `_iovs` stays bound: `msgs` points into it.
    let (_iovs, mut msgs) = batch(&mut bufs);
    for msg in &mut msgs {
        msg.msg_hdr.msg_name = (&to as *const To).cast_mut().cast();
        msg.msg_hdr.msg_namelen = mem::size_of::<To>() as u32;
    }
    let deadline = Instant::now() + secs;
    let (mut next, mut sent) = (0u64, 0u64);
    while next < max && Instant::now() < deadline {
        let batch = (max - next).min(BATCH as u64) as usize;
        for buf in &mut bufs[..batch] {
            // Address varies fastest, so every address is in use at once.
            let n = (next % u64::from(src_count)) as u32;
            let port = FIRST_PORT + (next / u64::from(src_count)) as u16;
            fill(n, port, buf);
            next += 1;
        }
        // SAFETY: msgs point at bufs, iovs and `to`, which outlive the call.
        let n = unsafe { libc::sendmmsg(fd, msgs.as_mut_ptr(), batch as u32, 0) };
        sent += u64::try_from(n).unwrap_or(0);
    }
    // SAFETY: our descriptor, closed once.
    unsafe { libc::close(fd) };
    Ok(sent.to_string())
}

/// One iovec per buffer and one mmsghdr per iovec, for sendmmsg and
/// recvmmsg. The headers point into the returned iovecs (heap memory, which
/// moving the Vec does not move) and the iovecs into `bufs`: both must
/// outlive every call that uses the headers.
fn batch<const N: usize>(bufs: &mut [[u8; N]; BATCH]) -> (Vec<libc::iovec>, Vec<libc::mmsghdr>) {
    let mut iovs: Vec<libc::iovec> = bufs
        .iter_mut()
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: b.len(),
        })
        .collect();
    // SAFETY: mmsghdr is plain data; zero is a valid (empty) value.
    let mut msgs: Vec<libc::mmsghdr> = (0..BATCH).map(|_| unsafe { mem::zeroed() }).collect();
    for (msg, iov) in msgs.iter_mut().zip(iovs.iter_mut()) {
        msg.msg_hdr.msg_iov = iov;
        msg.msg_hdr.msg_iovlen = 1;
    }
    (iovs, msgs)
}

/// An IPv4/UDP datagram with both checksums complete, as a host without
/// offload would send it.
fn datagram(buf: &mut [u8; 46], src: SocketAddrV4, dst: SocketAddrV4) {
    buf[..20].copy_from_slice(&[
        0x45, 0, 0, 46, 0, 0, 0x40, 0, 64, 17, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ]);
    buf[12..16].copy_from_slice(&src.ip().octets());
    buf[16..20].copy_from_slice(&dst.ip().octets());
    let ip_sum = checksum(0, &buf[..20]);
    buf[10..12].copy_from_slice(&ip_sum.to_be_bytes());
    let addrs = sum(&buf[12..20]);
    udp(&mut buf[20..], addrs, src.port(), dst.port());
}

/// An IPv6/UDP datagram with its checksum complete, which IPv6 requires.
fn datagram_v6(buf: &mut [u8; 66], src: SocketAddrV6, dst: SocketAddrV6) {
    // Version 6, no traffic class or flow label; next header UDP, hop
    // limit 64.
    buf[..8].copy_from_slice(&[0x60, 0, 0, 0, 0, 0, 17, 64]);
    buf[4..6].copy_from_slice(&UDP_LEN.to_be_bytes());
    buf[8..24].copy_from_slice(&src.ip().octets());
    buf[24..40].copy_from_slice(&dst.ip().octets());
    let addrs = sum(&buf[8..40]);
    udp(&mut buf[40..], addrs, src.port(), dst.port());
}

const UDP_LEN: u16 = 8 + PAYLOAD.len() as u16;

/// The UDP header and payload; `addrs` is the sum of the pseudo-header's
/// addresses, the rest of which is the same in both families.
fn udp(seg: &mut [u8], addrs: u32, src_port: u16, dst_port: u16) {
    seg[0..2].copy_from_slice(&src_port.to_be_bytes());
    seg[2..4].copy_from_slice(&dst_port.to_be_bytes());
    seg[4..6].copy_from_slice(&UDP_LEN.to_be_bytes());
    seg[6..8].copy_from_slice(&[0, 0]);
    seg[8..].copy_from_slice(PAYLOAD);
    let udp_sum = match checksum(addrs + 17 + u32::from(UDP_LEN), seg) {
        // Zero means "no checksum" in UDP over IPv4, and is not allowed
        // over IPv6.
        0 => 0xffff,
        s => s,
    };
    seg[6..8].copy_from_slice(&udp_sum.to_be_bytes());
}

fn sum(bytes: &[u8]) -> u32 {
    bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum()
}

fn checksum(initial: u32, bytes: &[u8]) -> u16 {
    let mut s = initial + sum(bytes);
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

fn setsockopt(fd: i32, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: a c_int option value of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const i32).cast(),
            mem::size_of::<i32>() as u32,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
