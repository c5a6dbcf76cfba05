//! `xdplb monitor`: the data plane's drops, rejects, new flows and other
//! events as they happen, read from the pinned `MONITOR` ring buffer. The
//! programs write events only while the command holds its lease in
//! `MONITOR_ON` (`lb_common::monitor`), which it renews every second and
//! clears on the way out; a monitor killed without clearing it leaves the
//! events on for `MONITOR_LEASE_NS` at most.
use std::{
    collections::HashMap,
    fs::File,
    io::Write,
    net::{IpAddr, SocketAddr},
    os::fd::AsRawFd,
    path::Path,
    time::Duration,
};

use anyhow::{bail, Context, Result};
use aya::maps::{Array, Map, MapData, PerCpuArray, RingBuf};
use lb_common::{
    addr::{from_map, from_map_v6},
    monitor::{MonitorEvent, MonitorEventOf, MonitorEventV6, MONITOR_LEASE_NS, MONITOR_RENEW_NS},
    names, Reason, SvcName, CT_DIR_REPLY, PROTO_TCP, PROTO_UDP,
};
use serde_json::json;
use tokio::{
    io::{unix::AsyncFd, Interest},
    signal::unix::{signal, SignalKind},
};

use crate::{
    cli::{MonitorArgs, Output},
    datapath::{pinned, svc_name_str},
};

/// The switch: while the deadline in `MONITOR_ON` lies ahead, the data
/// plane writes events.
pub struct Lease(Array<MapData, u64>);

impl Lease {
    pub fn new(map: Map) -> Result<Self> {
        Ok(Self(map.try_into()?))
    }

    /// The lease pinned in `maps_dir`.
    pub fn open(maps_dir: &Path) -> Result<Self> {
        Self::new(pinned(maps_dir, names::MONITOR_ON)?)
    }

    /// The deadline held; 0 when no monitor holds one.
    pub fn until(&self) -> Result<u64> {
        Ok(self.0.get(&0, 0)?)
    }

    /// Events on for the next `MONITOR_LEASE_NS`.
    pub fn renew(&mut self) -> Result<()> {
        self.set(monotonic_ns() + MONITOR_LEASE_NS)
    }

    pub fn clear(&mut self) -> Result<()> {
        self.set(0)
    }

    /// A deadline as the programs compare it: `bpf_ktime_get_ns`.
    pub fn set(&mut self, until_ns: u64) -> Result<()> {
        Ok(self.0.set(0, until_ns, 0)?)
    }
}

/// `bpf_ktime_get_ns`'s clock.
pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime(2) into a timespec on the stack.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// An event of either family as shown: `None` for an address the event
/// does not know (0 in the ring).
pub type Event = MonitorEventOf<Option<IpAddr>>;

/// Every event waiting in `ring`, oldest first.
pub fn drain(ring: &mut RingBuf<MapData>) -> Vec<Event> {
    let mut out = Vec::new();
    while let Some(item) = ring.next() {
        out.extend(decode(&item));
    }
    out
}

/// One ring record. IPv4 and IPv6 events share the ring, each record as
/// long as its event: the length tells them apart (`lb_common::monitor`
/// asserts the sizes differ). A record of neither size is skipped.
pub fn decode(record: &[u8]) -> Option<Event> {
    match record.len() {
        n if n == size_of::<MonitorEvent>() => Some(widen(read::<MonitorEvent>(record))),
        n if n == size_of::<MonitorEventV6>() => Some(widen(read::<MonitorEventV6>(record))),
        _ => None,
    }
}

/// `record`, exactly a `T` long, as a `T`.
fn read<T: aya::Pod>(record: &[u8]) -> T {
    assert_eq!(record.len(), size_of::<T>());
    // SAFETY: a Pod of the record's length; the ring's records are only
    // 8-byte aligned.
    unsafe { record.as_ptr().cast::<T>().read_unaligned() }
}

/// An address as an event holds it, for either family.
trait RingAddr: Copy {
    fn ip(self) -> Option<IpAddr>;
}

impl RingAddr for u32 {
    fn ip(self) -> Option<IpAddr> {
        (self != 0).then(|| from_map(self).into())
    }
}

impl RingAddr for [u32; 4] {
    fn ip(self) -> Option<IpAddr> {
        (self != [0; 4]).then(|| from_map_v6(self).into())
    }
}

fn widen<A: RingAddr>(e: MonitorEventOf<A>) -> Event {
    MonitorEventOf {
        ktime_ns: e.ktime_ns,
        reason: e.reason,
        svc_id: e.svc_id,
        ifindex: e.ifindex,
        saddr: e.saddr.ip(),
        daddr: e.daddr.ip(),
        sport: e.sport,
        dport: e.dport,
        to_addr: e.to_addr.ip(),
        to_port: e.to_port,
        proto: e.proto,
        dir: e.dir,
        snat_addr: e.snat_addr.ip(),
        snat_port: e.snat_port,
        _pad: 0,
    }
}

/// Which events to show: all the flags passed must match.
pub struct Selection<'a> {
    args: &'a MonitorArgs,
    reasons: Vec<Reason>,
}

impl<'a> Selection<'a> {
    pub fn new(args: &'a MonitorArgs) -> Result<Self> {
        let reasons = args
            .reasons
            .iter()
            .map(|name| {
                Reason::from_name(name).with_context(|| {
                    let known: Vec<&str> = Reason::ALL.iter().map(|r| r.name()).collect();
                    format!("no reason {name:?}; the reasons are {}", known.join(", "))
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self { args, reasons })
    }

    pub fn passes(&self, e: &Event, service: &str) -> bool {
        let addrs: Vec<IpAddr> = [e.saddr, e.daddr, e.to_addr, e.snat_addr]
            .into_iter()
            .flatten()
            .collect();
        (self.reasons.is_empty() || self.reasons.iter().any(|&r| r as u32 == e.reason))
            && self.args.view.filter.service(service)
            && self.args.view.filter.addr(&addrs)
    }
}

fn proto_name(p: u8) -> String {
    match p {
        PROTO_TCP => "TCP".into(),
        PROTO_UDP => "UDP".into(),
        1 => "ICMP".into(),
        n => n.to_string(),
    }
}

/// An address with its port (an IPv6 one bracketed), or alone where the
/// event has no ports; `None` for an address the event does not know.
fn endpoint(addr: Option<IpAddr>, port: u16, proto: u8) -> Option<String> {
    let addr = addr?;
    Some(if proto == PROTO_TCP || proto == PROTO_UDP {
        SocketAddr::new(addr, u16::from_be(port)).to_string()
    } else {
        addr.to_string()
    })
}

/// One event as `-o json` prints it; `time` is the wall clock, `service`
/// the name `SVC_NAMES` holds (empty when none), `iface` the name of the
/// interface in this network namespace.
pub fn row(
    e: &Event,
    time: jiff::Timestamp,
    service: &str,
    iface: Option<&str>,
) -> serde_json::Value {
    let reason = Reason::from_value(e.reason)
        .map(|r| r.name().to_string())
        .unwrap_or_else(|| format!("reason#{}", e.reason));
    json!({
        "time": time.to_string(),
        "reason": reason,
        "proto": proto_name(e.proto),
        "src": endpoint(e.saddr, e.sport, e.proto),
        "dst": endpoint(e.daddr, e.dport, e.proto),
        "direction": if e.dir == CT_DIR_REPLY { "reply" } else { "forward" },
        "to": endpoint(e.to_addr, e.to_port, e.proto),
        "snat": endpoint(e.snat_addr, e.snat_port, e.proto),
        "service": (!service.is_empty()).then_some(service),
        "ifindex": e.ifindex,
        "iface": iface,
    })
}

/// A line of the table, header or event.
fn table_line(cells: [&str; 8]) -> String {
    let [time, reason, proto, src, dst, translated, iface, service] = cells;
    format!(
        "{time:<12} {reason:<26} {proto:<5} {src:<21} {dst:<21} {translated:<42} {iface:<12} {service}"
    )
}

const HEADER: [&str; 8] = [
    "TIME",
    "REASON",
    "PROTO",
    "SOURCE",
    "DESTINATION",
    "TRANSLATED",
    "IFACE",
    "SERVICE",
];

/// One `row` as a line of the table: the translation reads "to" the
/// backend, "from" the source NAT gives it, or "from" the frontend a reply
/// comes from.
fn table_row(r: &serde_json::Value, time: &jiff::Zoned) -> String {
    let s = |k: &str| r[k].as_str().unwrap_or("-");
    let translated = match (r["to"].as_str(), r["snat"].as_str()) {
        (None, _) => "-".to_string(),
        (Some(to), _) if r["direction"] == "reply" => format!("from {to}"),
        (Some(to), None) => format!("to {to}"),
        (Some(to), Some(snat)) => format!("to {to} from {snat}"),
    };
    let time = time.strftime("%H:%M:%S%.3f").to_string();
    table_line([
        &time,
        s("reason"),
        s("proto"),
        s("src"),
        s("dst"),
        &translated,
        s("iface"),
        s("service"),
    ])
}

/// Names read once per renewal: a Service id may be reused after its
/// Service is gone, so none is kept longer.
struct Names {
    svc: aya::maps::HashMap<MapData, u32, SvcName>,
    services: HashMap<u32, String>,
    ifaces: HashMap<u32, Option<String>>,
}

impl Names {
    fn service(&mut self, id: u32) -> &str {
        if id == 0 {
            return "";
        }
        let svc = &self.svc;
        self.services.entry(id).or_insert_with(|| {
            svc.get(&id, 0)
                .map(|n| svc_name_str(&n))
                .unwrap_or_else(|_| format!("#{id}"))
        })
    }

    fn iface(&mut self, ifindex: u32) -> Option<&str> {
        if ifindex == 0 {
            return None;
        }
        self.ifaces
            .entry(ifindex)
            .or_insert_with(|| {
                let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
                // SAFETY: if_indextoname(3) writes at most IF_NAMESIZE bytes.
                let name = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
                (!name.is_null()).then(|| {
                    // SAFETY: on success buf holds a NUL-terminated name.
                    unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }
                        .to_string_lossy()
                        .into_owned()
                })
            })
            .as_deref()
    }

    fn forget(&mut self) {
        self.services.clear();
        self.ifaces.clear();
    }
}

/// One reader per ring: two would split the events between them. The lock
/// is a flock of the pinned maps' directory, which nothing else takes.
fn lock(dir: &Path) -> Result<File> {
    let file = File::open(dir).with_context(|| format!("opening {}", dir.display()))?;
    // SAFETY: flock(2) on a descriptor this function owns.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let holder = crate::agent::flock_holder(&file)
            .map(|pid| format!(" (pid {pid})"))
            .unwrap_or_default();
        bail!("another xdplb monitor{holder} is reading this data plane's events");
    }
    Ok(file)
}

pub fn run(args: &MonitorArgs) -> Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(watch(args))
}

async fn watch(args: &MonitorArgs) -> Result<()> {
    let selection = Selection::new(args)?;
    let dir = crate::inspect::maps_dir(&args.view.pin);
    let _lock = lock(&dir)?;
    let ring: RingBuf<MapData> = pinned(&dir, names::MONITOR)?.try_into()?;
    // SAFETY: the ring owns its map's descriptor for as long as it lives,
    // inside the AsyncFd.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(std::io::Error::from)?;
    let mut lease = Lease::open(&dir)?;
    let stats: PerCpuArray<MapData, u64> = pinned(&dir, names::STATS)?.try_into()?;
    let lost_total = || -> Result<u64> {
        Ok(stats
            .get(&(Reason::MonitorEventsLost as u32), 0)?
            .iter()
            .sum())
    };
    let mut names = Names {
        svc: pinned(&dir, names::SVC_NAMES)?.try_into()?,
        services: Default::default(),
        ifaces: Default::default(),
    };
    // Events carry the monotonic clock; shown as wall-clock time.
    let epoch_ns = clock_ns(libc::CLOCK_REALTIME) as i128 - monotonic_ns() as i128;
    let tz = jiff::tz::TimeZone::system();
    let mut lost = lost_total()?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut renew = tokio::time::interval(Duration::from_nanos(MONITOR_RENEW_NS));
    let mut out = std::io::stdout().lock();
    if args.view.output == Output::Table {
        writeln!(out, "{}", table_line(HEADER))?;
    }
    let result: Result<()> = async {
        loop {
            tokio::select! {
                _ = renew.tick() => {
                    lease.renew()?;
                    names.forget();
                    let now = lost_total()?;
                    if now > lost {
                        eprintln!("xdplb monitor: {} events lost: the ring buffer was full", now - lost);
                        lost = now;
                    }
                }
                ready = ring.readable_mut() => {
                    let mut ready = ready?;
                    for e in drain(ready.get_inner_mut()) {
                        let service = names.service(e.svc_id).to_string();
                        if !selection.passes(&e, &service) {
                            continue;
                        }
                        let time = jiff::Timestamp::from_nanosecond(epoch_ns + e.ktime_ns as i128)?;
                        let r = row(&e, time, &service, names.iface(e.ifindex));
                        let line = match args.view.output {
                            Output::Json => r.to_string(),
                            Output::Table => table_row(&r, &time.to_zoned(tz.clone())),
                        };
                        writeln!(out, "{line}")?;
                    }
                    ready.clear_ready();
                }
                _ = term.recv() => return Ok(()),
                _ = int.recv() => return Ok(()),
            }
        }
    }
    .await;
    // A reader gone (a closed pipe) ends the monitor like a signal does.
    let result = match result {
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            Ok(())
        }
        r => r,
    };
    lease.clear()?;
    result
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use lb_common::addr::{to_map, to_map_v6};

    use super::*;

    /// A new NodePort flow from `client` to `node`, source-NATed to the
    /// node, to `backend` port `backend_port`; in the family of the
    /// addresses.
    fn new_flow_of<A: Copy + Default>(
        [client, node, backend]: [A; 3],
        backend_port: u16,
    ) -> MonitorEventOf<A> {
        MonitorEventOf {
            ktime_ns: 1,
            reason: Reason::XlateNew as u32,
            svc_id: 7,
            ifindex: 3,
            saddr: client,
            daddr: node,
            sport: 40000u16.to_be(),
            dport: 31000u16.to_be(),
            to_addr: backend,
            to_port: backend_port.to_be(),
            proto: PROTO_TCP,
            snat_addr: node,
            snat_port: 40000u16.to_be(),
            ..MonitorEventOf::default()
        }
    }

    fn new_flow() -> MonitorEvent {
        let addrs = [[198, 51, 100, 2], [192, 168, 50, 11], [10, 244, 2, 2]];
        new_flow_of(addrs.map(|a| to_map(Ipv4Addr::from(a))), 3000)
    }

    #[test]
    fn an_event_prints_as_json_and_as_a_table_line() {
        let time: jiff::Timestamp = "2025-01-02T03:04:05.678Z".parse().unwrap();
        let r = row(
            &widen(new_flow()),
            time,
            "default/web:http/TCP",
            Some("eth0"),
        );
        assert_eq!(
            r,
            json!({
                "time": "2025-01-02T03:04:05.678Z",
                "reason": "xlate_new_flow",
                "proto": "TCP",
                "src": "198.51.100.2:40000",
                "dst": "192.168.50.11:31000",
                "direction": "forward",
                "to": "10.244.2.2:3000",
                "snat": "192.168.50.11:40000",
                "service": "default/web:http/TCP",
                "ifindex": 3,
                "iface": "eth0",
            })
        );
        let line = table_row(&r, &time.to_zoned(jiff::tz::TimeZone::UTC));
        let words: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(
            words,
            [
                "03:04:05.678",
                "xlate_new_flow",
                "TCP",
                "198.51.100.2:40000",
                "192.168.50.11:31000",
                "to",
                "10.244.2.2:3000",
                "from",
                "192.168.50.11:40000",
                "eth0",
                "default/web:http/TCP"
            ]
        );
    }

    #[test]
    fn events_without_ports_or_a_source_show_none() {
        let e = MonitorEvent {
            reason: Reason::SockRefused as u32,
            daddr: to_map(Ipv4Addr::new(10, 96, 0, 10)),
            dport: 80u16.to_be(),
            proto: PROTO_UDP,
            ..MonitorEvent::default()
        };
        let r = row(&widen(e), jiff::Timestamp::UNIX_EPOCH, "", None);
        assert_eq!(
            (&r["src"], &r["dst"], &r["to"], &r["service"], &r["iface"]),
            (
                &json!(null),
                &json!("10.96.0.10:80"),
                &json!(null),
                &json!(null),
                &json!(null)
            )
        );
        let icmp = MonitorEvent {
            reason: Reason::XlateIcmpError as u32,
            saddr: to_map(Ipv4Addr::new(192, 0, 2, 1)),
            proto: 1,
            ..e
        };
        let r = row(&widen(icmp), jiff::Timestamp::UNIX_EPOCH, "", None);
        assert_eq!(
            (&r["src"], &r["proto"]),
            (&json!("192.0.2.1"), &json!("ICMP"))
        );
    }

    fn args(reasons: &[&str], service: Option<&str>, addr: Option<IpAddr>) -> MonitorArgs {
        MonitorArgs {
            view: crate::cli::InspectArgs {
                pin: crate::cli::PinArgs {
                    pin_path: "/unused".into(),
                },
                output: Output::Json,
                filter: crate::cli::Filter {
                    service: service.map(str::to_string),
                    addr,
                },
            },
            reasons: reasons.iter().map(|r| r.to_string()).collect(),
        }
    }

    #[test]
    fn a_selection_needs_every_flag_to_match() {
        let args = |reasons: &[&str], service, addr: Option<Ipv4Addr>| {
            args(reasons, service, addr.map(Into::into))
        };
        let e = widen(new_flow());
        let svc = "default/web:http/TCP";
        let passes = |a: MonitorArgs| Selection::new(&a).unwrap().passes(&e, svc);
        assert!(passes(args(&[], None, None)));
        assert!(passes(args(
            &["drop_source_range", "xlate_new_flow"],
            None,
            None
        )));
        assert!(!passes(args(&["drop_source_range"], None, None)));
        assert!(passes(args(&[], Some("default/web"), None)));
        assert!(!passes(args(&[], Some("default/db"), None)));
        let backend = Ipv4Addr::new(10, 244, 2, 2);
        assert!(passes(args(
            &["xlate_new_flow"],
            Some("default/web"),
            Some(backend)
        )));
        assert!(!passes(args(&[], None, Some(Ipv4Addr::new(10, 0, 0, 1)))));
        let err = Selection::new(&args(&["drop_everything"], None, None))
            .err()
            .unwrap();
        assert!(err.to_string().contains("reject_no_backend"), "{err}");
    }

    fn v6(a: &str) -> Ipv6Addr {
        a.parse().unwrap()
    }

    fn new_flow_v6() -> MonitorEventV6 {
        let addrs = ["2001:db8:7::7", "fd00:10::1", "fd00:244:2::2"];
        new_flow_of(addrs.map(|a| to_map_v6(v6(a))), 8080)
    }

    /// `e` as the programs write it to the ring.
    fn record<T: aya::Pod>(e: &T) -> &[u8] {
        // SAFETY: a Pod has no padding to read.
        unsafe { std::slice::from_raw_parts((e as *const T).cast(), size_of::<T>()) }
    }

    #[test]
    fn an_ipv6_record_is_told_by_its_length_and_prints_bracketed() {
        let e = decode(record(&new_flow_v6())).unwrap();
        let time: jiff::Timestamp = "2025-01-02T03:04:05.678Z".parse().unwrap();
        let r = row(&e, time, "default/web:http/TCP", Some("eth0"));
        assert_eq!(
            (&r["src"], &r["dst"], &r["to"], &r["snat"], &r["reason"]),
            (
                &json!("[2001:db8:7::7]:40000"),
                &json!("[fd00:10::1]:31000"),
                &json!("[fd00:244:2::2]:8080"),
                &json!("[fd00:10::1]:40000"),
                &json!("xlate_new_flow"),
            )
        );
        let line = table_row(&r, &time.to_zoned(jiff::tz::TimeZone::UTC));
        let words: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(
            words[3..9],
            [
                "[2001:db8:7::7]:40000",
                "[fd00:10::1]:31000",
                "to",
                "[fd00:244:2::2]:8080",
                "from",
                "[fd00:10::1]:40000",
            ]
        );

        let v4 = decode(record(&new_flow())).unwrap();
        assert_eq!(v4.saddr, Some(Ipv4Addr::new(198, 51, 100, 2).into()));
        let e = new_flow_v6();
        assert_eq!(decode(&record(&e)[..size_of::<MonitorEvent>() + 8]), None);
    }

    #[test]
    fn an_ipv6_event_without_a_source_or_translation_shows_none() {
        let e = MonitorEventV6 {
            reason: Reason::RejectNoBackend as u32,
            daddr: to_map_v6(v6("fd00:96::11")),
            dport: 80u16.to_be(),
            proto: PROTO_UDP,
            ..MonitorEventV6::default()
        };
        let r = row(
            &decode(record(&e)).unwrap(),
            jiff::Timestamp::UNIX_EPOCH,
            "",
            None,
        );
        assert_eq!(
            (&r["src"], &r["dst"], &r["to"], &r["snat"]),
            (
                &json!(null),
                &json!("[fd00:96::11]:80"),
                &json!(null),
                &json!(null)
            )
        );
    }

    #[test]
    fn an_ipv6_address_selects_the_ipv6_events_naming_it() {
        let e = widen(new_flow_v6());
        let passes = |addr: IpAddr| {
            Selection::new(&args(&[], None, Some(addr)))
                .unwrap()
                .passes(&e, "")
        };
        assert!(passes(v6("fd00:244:2::2").into()), "the backend");
        assert!(passes(v6("2001:db8:7::7").into()), "the client");
        assert!(!passes(v6("fd00:244:2::3").into()));
        assert!(!passes(Ipv4Addr::new(10, 244, 2, 2).into()));
    }
}
