//! The traffic generator and sink of `cargo xtask bench --testbed`, std and
//! libc only.
//!
//! `bench-traffic sink PORT SECS` binds UDP PORT, prints `ready`, and once
//! the first datagram arrives lets WARMUP pass, then counts for SECS; it
//! prints `<counted> <seconds counted> <received in all>`.
//!
//! `bench-traffic flows ADDR:PORT FLOWS SECS` sends from FLOWS connected UDP
//! sockets as fast as it can for SECS; `bench-traffic new-flows ADDR:PORT
//! FIRST_SRC SRC_COUNT SECS` sends raw IPv4/UDP datagrams whose source
//! (address, port) never repeats: addresses FIRST_SRC and the SRC_COUNT - 1
//! after it, ports 1024-65535. Both print `<datagrams sent>`.
use std::{
    env,
    io::{self, Write},
    mem,
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
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
        ["sink", port, secs] => sink(parse(port), secs_arg(secs)),
        ["flows", dst, count, secs] => flows(parse(dst), parse(count), secs_arg(secs)),
        ["new-flows", dst, first, count, secs] => {
            new_flows(parse(dst), parse(first), parse(count), secs_arg(secs))
        }
        _ => Err(io::Error::other(
            "usage: bench-traffic sink PORT SECS | flows ADDR:PORT FLOWS SECS | \
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

fn sink(port: u16, window: Duration) -> io::Result<String> {
    let socket = UdpSocket::bind(("0.0.0.0", port))?;
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

fn flows(dst: SocketAddrV4, flows: usize, secs: Duration) -> io::Result<String> {
    let sockets = (0..flows)
        .map(|_| {
            let s = UdpSocket::bind(("0.0.0.0", 0))?;
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
    dst: SocketAddrV4,
    first_src: Ipv4Addr,
    src_count: u32,
    secs: Duration,
) -> io::Result<String> {
    // SAFETY: plain syscall.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let max = u64::from(src_count) * u64::from(u16::MAX - FIRST_PORT + 1);
    let to = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: dst.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*dst.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    let mut bufs = [[0u8; 46]; BATCH];
    // `_iovs` stays bound: `msgs` points into it.
    let (_iovs, mut msgs) = batch(&mut bufs);
    for msg in &mut msgs {
        msg.msg_hdr.msg_name = (&to as *const libc::sockaddr_in).cast_mut().cast();
        msg.msg_hdr.msg_namelen = mem::size_of::<libc::sockaddr_in>() as u32;
    }
    let deadline = Instant::now() + secs;
    let (mut next, mut sent) = (0u64, 0u64);
    while next < max && Instant::now() < deadline {
        let batch = (max - next).min(BATCH as u64) as usize;
        for buf in &mut bufs[..batch] {
            // Address varies fastest, so every address is in use at once.
            let src = Ipv4Addr::from(u32::from(first_src) + (next % u64::from(src_count)) as u32);
            let port = FIRST_PORT + (next / u64::from(src_count)) as u16;
            datagram(buf, SocketAddrV4::new(src, port), dst);
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

/// An IPv4/UDP datagram with both checksums complete, as a host without
/// offload would send it.
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

fn datagram(buf: &mut [u8; 46], src: SocketAddrV4, dst: SocketAddrV4) {
    let udp_len = 8 + PAYLOAD.len() as u16;
    buf[..20].copy_from_slice(&[
        0x45, 0, 0, 46, 0, 0, 0x40, 0, 64, 17, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ]);
    buf[12..16].copy_from_slice(&src.ip().octets());
    buf[16..20].copy_from_slice(&dst.ip().octets());
    let ip_sum = checksum(0, &buf[..20]);
    buf[10..12].copy_from_slice(&ip_sum.to_be_bytes());
    buf[20..22].copy_from_slice(&src.port().to_be_bytes());
    buf[22..24].copy_from_slice(&dst.port().to_be_bytes());
    buf[24..26].copy_from_slice(&udp_len.to_be_bytes());
    buf[26..28].copy_from_slice(&[0, 0]);
    buf[28..].copy_from_slice(PAYLOAD);
    let pseudo = sum(&buf[12..20]) + 17 + u32::from(udp_len);
    let udp_sum = match checksum(pseudo, &buf[20..]) {
        // Zero means "no checksum" in UDP over IPv4.
        0 => 0xffff,
        s => s,
    };
    buf[26..28].copy_from_slice(&udp_sum.to_be_bytes());
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
