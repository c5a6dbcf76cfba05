//! The seed's counter app, rebuilt for `cargo xtask demo` so the demo needs
//! no container runtime: an HTTP server on port 3000 that increments a key in
//! Redis on every request and answers `{"count":N,"pod":"<name>"}`.
//!
//! It listens on both families, IPv4 and IPv6.
//!
//! Configured like the seed's image: `REDIS_HOST` and `REDIS_PORT` name the
//! Redis Service, `POD_NAME` plays the downward API. Redis is reached anew for
//! each request so every count travels through the Service's ClusterIP.
use std::{
    env,
    io::{self, BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream, ToSocketAddrs},
    process::ExitCode,
    thread,
    time::Duration,
};

const LISTEN_PORT: u16 = 3000;
/// Bounds each Redis exchange and each client's request, so a lost packet
/// costs one answer rather than a stuck thread.
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// `INCR hits` in RESP, Redis' wire protocol.
const INCR_HITS: &[u8] = b"*2\r\n$4\r\nINCR\r\n$4\r\nhits\r\n";

struct Config {
    pod: String,
    redis_host: String,
    redis_port: u16,
}

fn main() -> ExitCode {
    let config = match config() {
        Ok(config) => config,
        Err(err) => {
            eprintln!("counter: {err}");
            return ExitCode::FAILURE;
        }
    };
    // One socket for both families: `::` with IPV6_V6ONLY off, the
    // distributions' default (net.ipv6.bindv6only=0), as the seed's image
    // listens.
    let listener = match TcpListener::bind(("::", LISTEN_PORT)) {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!("counter: cannot listen on port {LISTEN_PORT}: {err}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!(
        "counter: pod {} listening on :{LISTEN_PORT}, Redis at {}:{}",
        config.pod, config.redis_host, config.redis_port
    );
    let config: &'static Config = Box::leak(Box::new(config));
    for stream in listener.incoming() {
        match stream {
            Ok(stream) => {
                thread::spawn(move || {
                    if let Err(err) = serve(config, stream) {
                        eprintln!("counter: {err}");
                    }
                });
            }
            Err(err) => eprintln!("counter: accept: {err}"),
        }
    }
    ExitCode::SUCCESS
}

fn config() -> Result<Config, String> {
    let var = |name: &str| env::var(name).map_err(|_| format!("{name} is not set"));
    let port = var("REDIS_PORT")?;
    Ok(Config {
        pod: var("POD_NAME")?,
        redis_host: var("REDIS_HOST")?,
        redis_port: port
            .parse()
            .map_err(|_| format!("REDIS_PORT {port:?} is not a port number"))?,
    })
}

fn serve(config: &Config, stream: TcpStream) -> io::Result<()> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut reader = BufReader::new(&stream);
    // Readiness probes connect and close without a request: nothing to count.
    let mut request_line = String::new();
    if reader.read_line(&mut request_line)? == 0 {
        return Ok(());
    }
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header == "\r\n" || header == "\n" {
            break;
        }
    }
    let (status, body) = match incr(config) {
        Ok(count) => (
            "200 OK",
            format!("{{\"count\":{count},\"pod\":\"{}\"}}\n", config.pod),
        ),
        Err(err) => (
            "502 Bad Gateway",
            format!(
                "{{\"error\":\"Redis at {}:{}: {err}\",\"pod\":\"{}\"}}\n",
                config.redis_host, config.redis_port, config.pod
            ),
        ),
    };
    let mut out = &stream;
    write!(
        out,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// `INCR hits`; the host name is resolved on every call, as the seed's
/// image would through cluster DNS.
fn incr(config: &Config) -> io::Result<i64> {
    let addr = (config.redis_host.as_str(), config.redis_port)
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::other(format!("{} has no address", config.redis_host)))?;
    let mut redis = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    redis.set_read_timeout(Some(IO_TIMEOUT))?;
    redis.write_all(INCR_HITS)?;
    // Integer replies are one short line: `:<n>\r\n`; errors `-<message>\r\n`.
    let mut reply = String::new();
    BufReader::new(redis.take(512)).read_line(&mut reply)?;
    let reply = reply.trim_end();
    match reply.strip_prefix(':') {
        Some(n) => n
            .parse()
            .map_err(|_| io::Error::other(format!("unexpected reply {reply:?}"))),
        None => Err(io::Error::other(format!("unexpected reply {reply:?}"))),
    }
}
