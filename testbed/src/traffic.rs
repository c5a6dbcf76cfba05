//! HTTP requests from the external client, timed, with the source port
//! each one used so a request that got no answer can be looked up in the
//! receiving node's connection table.
use std::{
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, TcpStream},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use socket2::{Domain, Protocol, Socket, Type};

/// A SYN-ACK takes well under a millisecond in the testbed; a second means
/// none is coming.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const REPLY_TIMEOUT: Duration = Duration::from_secs(3);

/// What the counter app answers.
#[derive(Debug, Deserialize)]
pub struct Answer {
    pub count: i64,
    pub pod: String,
}

pub struct Outcome {
    pub source_port: u16,
    pub latency: Duration,
    pub answer: Result<Answer>,
}

/// `GET /` to `target`, from the calling thread's network namespace.
pub fn get(target: SocketAddrV4) -> Result<Outcome> {
    get_any(SocketAddr::V4(target))
}

/// [`get`] for a target of either family.
pub fn get_any(target: SocketAddr) -> Result<Outcome> {
    let (domain, any) = match target {
        SocketAddr::V4(_) => (Domain::IPV4, IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        SocketAddr::V6(_) => (Domain::IPV6, IpAddr::V6(Ipv6Addr::UNSPECIFIED)),
    };
    let socket = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    // Bound before connecting so the source port is known even when the
    // connection never comes up.
    socket.bind(&SocketAddr::from((any, 0)).into())?;
    let source_port = socket
        .local_addr()?
        .as_socket()
        .context("local address is not IP")?
        .port();
    let started = Instant::now();
    let answer = exchange(socket, target);
    Ok(Outcome {
        source_port,
        latency: started.elapsed(),
        answer,
    })
}

fn exchange(socket: Socket, target: SocketAddr) -> Result<Answer> {
    socket
        .connect_timeout(&target.into(), CONNECT_TIMEOUT)
        .with_context(|| format!("connecting to {target}"))?;
    let mut stream = TcpStream::from(socket);
    stream.set_read_timeout(Some(REPLY_TIMEOUT))?;
    write!(
        stream,
        "GET / HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .context("reading the reply")?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("the reply has no HTTP header")?;
    let status = head.lines().next().unwrap_or_default();
    if !status.contains(" 200 ") {
        bail!("{status}: {}", body.trim());
    }
    serde_json::from_str(body).with_context(|| format!("unexpected body {body:?}"))
}
