//! The inspection commands. They read the pinned maps directly, so they work
//! whether or not an agent runs, and show what the packet path sees.
use std::{
    collections::{BTreeSet, HashMap},
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, SocketAddrV6},
    path::PathBuf,
};

use anyhow::{bail, Context, Result};
use aya::maps::IterableMap;
use lb_common::{
    addr::{from_map, from_map_v6, to_map, to_map_v6},
    conntrack::{STATE_CLOSING, STATE_SEEN_REPLY},
    decide::{self, By, Client, Decision, Key, View},
    BackendV4, BackendV6, CtKey, CtKeyV4, CtKeyV6, CtValue, CtValueV4, CtValueV6, FrontendKeyV4,
    FrontendKeyV6, FrontendValue, LbAddrInfo, Reason, SvcName, CT_DIR_FORWARD, FE_EXTERNAL,
    LAYOUT_VERSION, PROTO_TCP, PROTO_UDP,
};
use serde_json::json;

use crate::{
    cli::{ExplainArgs, Filter, InspectArgs, Output, PinArgs},
    datapath::{lookup_all, now_ns, svc_name_str, Maps, MapsView, MapsViewV6},
};

/// Where the agent of this version pins its maps.
pub fn maps_dir(pin: &PinArgs) -> PathBuf {
    pin.pin_path.join(format!("v{LAYOUT_VERSION}")).join("maps")
}

fn open(pin: &PinArgs) -> Result<Maps> {
    Maps::from_pins(&maps_dir(pin))
}

fn proto_name(p: u8) -> &'static str {
    match p {
        PROTO_TCP => "TCP",
        PROTO_UDP => "UDP",
        _ => "?",
    }
}

fn service_name(maps: &Maps, svc_id: u32) -> String {
    maps.svc_names()
        .get(&svc_id, 0)
        .map(|n| svc_name_str(&n))
        .unwrap_or_else(|_| format!("#{svc_id}"))
}

fn ring_backends(maps: &Maps, offset: u32, size: u32) -> Result<Vec<SocketAddrV4>> {
    let ids: BTreeSet<u32> = maps.slots().read(offset, size)?.into_iter().collect();
    let mut out = Vec::new();
    for id in ids {
        let b: BackendV4 = maps.backends().get(&id, 0)?;
        out.push(SocketAddrV4::new(from_map(b.addr), u16::from_be(b.port)));
    }
    out.sort();
    Ok(out)
}

/// The name of Service port `id`, if `filter` shows it.
fn shown_name(names: &HashMap<u32, String>, id: u32, filter: &Filter) -> Option<String> {
    let name = names.get(&id).cloned().unwrap_or_else(|| format!("#{id}"));
    filter.service(&name).then_some(name)
}

/// The IPv6 backends of the ring at `offset`, by address.
fn ring_backends_v6(maps: &Maps, offset: u32, size: u32) -> Result<Vec<SocketAddrV6>> {
    let ids: BTreeSet<u32> = maps.slots().read(offset, size)?.into_iter().collect();
    let mut out = Vec::new();
    for id in ids {
        let b: BackendV6 = maps.backends_v6().get(&id, 0)?;
        out.push(SocketAddrV6::new(
            from_map_v6(b.addr),
            u16::from_be(b.port),
            0,
            0,
        ));
    }
    out.sort();
    Ok(out)
}

/// The rows of IPv6 frontends. An `--addr` filter is an IPv4 address,
/// which no IPv6 row holds.
fn service_rows_v6(
    maps: &Maps,
    filter: &Filter,
    names: &HashMap<u32, String>,
    lb_addrs: &HashMap<IpAddr, LbAddrInfo>,
) -> Result<Vec<serde_json::Value>> {
    let mut rows = Vec::new();
    if filter.addr.is_some() {
        return Ok(rows);
    }
    for (k, v) in lookup_all::<FrontendKeyV6, FrontendValue>(maps.frontends_v6().map())? {
        let Some(name) = shown_name(names, v.svc_id, filter) else {
            continue;
        };
        let backends = ring_backends_v6(maps, v.ring_offset, v.ring_size)?;
        let stats = maps.service_totals(v.svc_id)?;
        let mut row = json!({
            "frontend": format!("[{}]:{}/{}", from_map_v6(k.addr), u16::from_be(k.port), proto_name(k.proto)),
            "service": name,
            "scope": if v.flags & FE_EXTERNAL != 0 { "external" } else { "cluster" },
            "backends": backends.iter().map(|b| b.to_string()).collect::<Vec<_>>(),
            "packets": stats.packets,
            "bytes": stats.bytes,
        });
        add_lb_addr(&mut row, lb_addrs.get(&IpAddr::V6(from_map_v6(k.addr))));
        rows.push(row);
    }
    Ok(rows)
}

/// The pool and announcing node of a frontend address from the pools.
fn add_lb_addr(row: &mut serde_json::Value, info: Option<&LbAddrInfo>) {
    if let Some(info) = info {
        row["lb_pool"] = json!(info.pool());
        row["announced_by"] = match info.node() {
            "" => serde_json::Value::Null,
            node => json!(node),
        };
    }
}

/// One row per frontend `filter` passes, both families, sorted by Service
/// then frontend: what `xdplb services` shows.
pub fn service_rows(maps: &Maps, filter: &Filter) -> Result<Vec<serde_json::Value>> {
    let mut rows = Vec::new();
    let names = service_names(maps)?;
    let lb_addrs = lb_addrs(maps)?;
    for (k, v) in lookup_all::<FrontendKeyV4, FrontendValue>(maps.frontends().map())? {
        let Some(name) = shown_name(&names, v.svc_id, filter) else {
            continue;
        };
        let backends = ring_backends(maps, v.ring_offset, v.ring_size)?;
        let mut addrs: Vec<Ipv4Addr> = backends.iter().map(|b| *b.ip()).collect();
        addrs.push(from_map(k.addr));
        if !filter.addr(&addrs) {
            continue;
        }
        let stats = maps.service_totals(v.svc_id)?;
        let mut row = json!({
            "frontend": format!("{}:{}/{}", from_map(k.addr), u16::from_be(k.port), proto_name(k.proto)),
            "service": name,
            "scope": if v.flags & FE_EXTERNAL != 0 { "external" } else { "cluster" },
            "backends": backends.iter().map(|b| b.to_string()).collect::<Vec<_>>(),
            "packets": stats.packets,
            "bytes": stats.bytes,
        });
        add_lb_addr(&mut row, lb_addrs.get(&IpAddr::V4(from_map(k.addr))));
        rows.push(row);
    }
    rows.extend(service_rows_v6(maps, filter, &names, &lb_addrs)?);
    rows.sort_by_key(|r| (r["service"].to_string(), r["frontend"].to_string()));
    Ok(rows)
}

/// The pool addresses of both families.
fn lb_addrs(maps: &Maps) -> Result<HashMap<IpAddr, LbAddrInfo>> {
    let v4 = lookup_all::<u32, LbAddrInfo>(maps.lb_addrs().map())?;
    let v6 = lookup_all::<[u32; 4], LbAddrInfo>(maps.lb_addrs_v6().map())?;
    Ok(v4
        .into_iter()
        .map(|(a, info)| (IpAddr::V4(from_map(a)), info))
        .chain(
            v6.into_iter()
                .map(|(a, info)| (IpAddr::V6(from_map_v6(a)), info)),
        )
        .collect())
}

pub fn services(args: &InspectArgs) -> Result<()> {
    let maps = open(&args.pin)?;
    let rows = service_rows(&maps, &args.filter)?;
    let lb_addrs = lb_addrs(&maps)?;
    if args.output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!(
        "{:<28} {:<36} {:<9} {:>10} {:>12}  BACKENDS",
        "FRONTEND", "SERVICE", "SCOPE", "PACKETS", "BYTES"
    );
    for r in &rows {
        let backends: Vec<String> = serde_json::from_value(r["backends"].clone())?;
        println!(
            "{:<28} {:<36} {:<9} {:>10} {:>12}  {}",
            r["frontend"].as_str().unwrap_or(""),
            r["service"].as_str().unwrap_or(""),
            r["scope"].as_str().unwrap_or(""),
            r["packets"].as_u64().unwrap_or(0),
            r["bytes"].as_u64().unwrap_or(0),
            if backends.is_empty() {
                "(none: rejected)".to_string()
            } else {
                backends.join(", ")
            }
        );
    }
    print_lb_addrs(&lb_addrs, &rows);
    Ok(())
}

/// The LoadBalancer addresses from the pools that `rows` show: each with its
/// pool, the node that answers ARP or NDP for it and its Service.
fn print_lb_addrs(lb_addrs: &HashMap<IpAddr, LbAddrInfo>, rows: &[serde_json::Value]) {
    let mut shown: Vec<(IpAddr, &str, &str, &str)> = lb_addrs
        .iter()
        .filter_map(|(&addr, info)| {
            let prefix = match addr {
                IpAddr::V4(a) => format!("{a}:"),
                IpAddr::V6(a) => format!("[{a}]:"),
            };
            let row = rows.iter().find(|r| {
                r["frontend"]
                    .as_str()
                    .is_some_and(|f| f.starts_with(&prefix))
            })?;
            let service = row["service"].as_str()?.split(':').next()?;
            let node = match info.node() {
                "" => "(none: no Ready node may)",
                node => node,
            };
            Some((addr, info.pool(), node, service))
        })
        .collect();
    if shown.is_empty() {
        return;
    }
    shown.sort();
    shown.dedup();
    println!(
        "\n{:<16} {:<32} {:<24} SERVICE",
        "LB ADDRESS", "POOL", "ANNOUNCED BY"
    );
    for (addr, pool, node, service) in shown {
        println!("{:<16} {pool:<32} {node:<24} {service}", addr.to_string());
    }
}

/// Service names by id, read once rather than per row.
fn service_names(maps: &Maps) -> Result<HashMap<u32, String>> {
    Ok(lookup_all::<u32, SvcName>(maps.svc_names().map())?
        .into_iter()
        .map(|(id, n)| (id, svc_name_str(&n)))
        .collect())
}

/// The connection-tracking entries of both families `filter` passes, as
/// `xdplb flows -o json` prints them.
pub fn flow_rows(maps: &Maps, filter: &Filter) -> Result<Vec<serde_json::Value>> {
    let now = now_ns();
    let names = service_names(maps)?;
    let v4 = lookup_all::<CtKeyV4, CtValueV4>(maps.ct().map())?;
    let v6 = lookup_all::<CtKeyV6, CtValueV6>(maps.ct_v6().map())?;
    Ok(v4
        .iter()
        .filter_map(|(k, v)| flow_row(k, v, &names, filter, now))
        .chain(
            v6.iter()
                .filter_map(|(k, v)| flow_row(k, v, &names, filter, now)),
        )
        .collect())
}

/// An address as the maps hold it, shown.
trait Shown: Copy {
    fn ip(self) -> IpAddr;
}

impl Shown for u32 {
    fn ip(self) -> IpAddr {
        from_map(self).into()
    }
}

impl Shown for [u32; 4] {
    fn ip(self) -> IpAddr {
        from_map_v6(self).into()
    }
}

/// `flow_rows`' row of one entry, if `filter` passes it.
fn flow_row<K, V>(
    k: &K,
    v: &V,
    names: &HashMap<u32, String>,
    filter: &Filter,
    now: u64,
) -> Option<serde_json::Value>
where
    K: CtKey,
    V: CtValue<Addr = K::Addr>,
    K::Addr: Shown,
{
    let sum = v.summary();
    let service = names
        .get(&sum.svc_id)
        .cloned()
        .unwrap_or_else(|| format!("#{}", sum.svc_id));
    let nat = unsafe { V::nat(v) };
    let shown = |(addr, port): (K::Addr, u16)| SocketAddr::new(addr.ip(), u16::from_be(port));
    let (src, dst, nat) = (shown(k.src()), shown(k.dst()), shown(nat));
    if !filter.service(&service) || !filter.addr(&[src.ip(), dst.ip(), nat.ip()]) {
        return None;
    }
    let state = if sum.state & STATE_CLOSING != 0 {
        "closing"
    } else if sum.state & STATE_SEEN_REPLY != 0 || k.proto() != PROTO_TCP {
        "established"
    } else {
        "syn-sent"
    };
    Some(json!({
        "direction": if k.dir() == CT_DIR_FORWARD { "forward" } else { "reply" },
        "proto": proto_name(k.proto()),
        "src": src.to_string(),
        "dst": dst.to_string(),
        "nat": nat.to_string(),
        "service": service,
        "state": state,
        "idle_s": now.saturating_sub(sum.last_seen_ns) / 1_000_000_000,
        "expires_in_s": sum.expires_ns.saturating_sub(now) / 1_000_000_000,
    }))
}

pub fn flows(args: &InspectArgs) -> Result<()> {
    let maps = open(&args.pin)?;
    let rows = flow_rows(&maps, &args.filter)?;
    if args.output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!(
        "{:<8} {:<5} {:<22} {:<22} {:<22} {:<12} {:>7}  SERVICE",
        "DIR", "PROTO", "SRC", "DST", "REWRITTEN TO", "STATE", "IDLE s"
    );
    for r in rows {
        let s = |k: &str| r[k].as_str().unwrap_or("").to_string();
        println!(
            "{:<8} {:<5} {:<22} {:<22} {:<22} {:<12} {:>7}  {}",
            s("direction"),
            s("proto"),
            s("src"),
            s("dst"),
            s("nat"),
            s("state"),
            r["idle_s"].as_u64().unwrap_or(0),
            s("service")
        );
    }
    Ok(())
}

pub fn explain(args: &ExplainArgs) -> Result<()> {
    let maps = open(&args.pin)?;
    let src: SocketAddr = match args.src.parse() {
        Ok(s) => s,
        Err(_) => SocketAddr::new(args.src.parse().context("SRC is IP or IP:PORT")?, 40000),
    };
    let dst: SocketAddr = args
        .dst
        .parse()
        .context("DST is IP:PORT (IPv6: [IP]:PORT)")?;
    let proto = if args.proto == "udp" {
        PROTO_UDP
    } else {
        PROTO_TCP
    };
    let what = format!("{src} -> {dst}/{}", proto_name(proto));
    match (src, dst) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            let key = CtKeyV4::forward(
                (to_map(*s.ip()), s.port().to_be()),
                (to_map(*d.ip()), d.port().to_be()),
                proto,
            );
            match maps.ct().get(&key, 0) {
                Ok(ct) => existing(&maps, &what, &ct),
                Err(_) => decide_new(
                    &MapsView(&maps),
                    &what,
                    key.frontend(),
                    key.src_addr,
                    args.from_pod,
                    key.hash(),
                ),
            }
        }
        (SocketAddr::V6(s), SocketAddr::V6(d)) => {
            let key = CtKeyV6::forward(
                (to_map_v6(*s.ip()), s.port().to_be()),
                (to_map_v6(*d.ip()), d.port().to_be()),
                proto,
            );
            match maps.ct_v6().get(&key, 0) {
                Ok(ct) => existing(&maps, &what, &ct),
                Err(_) => decide_new(
                    &MapsViewV6(&maps),
                    &what,
                    key.frontend(),
                    key.src_addr,
                    args.from_pod,
                    key.hash(),
                ),
            }
        }
        _ => bail!("{src} and {dst} are of different address families"),
    }
    Ok(())
}

/// Explains a flow connection tracking already has.
fn existing<V: CtValue>(maps: &Maps, what: &str, ct: &V)
where
    V::Addr: Shown,
{
    let nat = unsafe { V::nat(ct) };
    println!(
        "{what}: existing flow of {}, pinned to {} by connection tracking",
        service_name(maps, ct.summary().svc_id),
        SocketAddr::new(nat.0.ip(), u16::from_be(nat.1))
    );
}

/// The maps a view reads.
trait AsMaps {
    fn maps(&self) -> &Maps;
}

impl AsMaps for MapsView<'_> {
    fn maps(&self) -> &Maps {
        self.0
    }
}

impl AsMaps for MapsViewV6<'_> {
    fn maps(&self) -> &Maps {
        self.0
    }
}

/// A backend of either family, shown.
trait ShownBackend {
    fn socket(&self) -> SocketAddr;
}

impl ShownBackend for BackendV4 {
    fn socket(&self) -> SocketAddr {
        SocketAddr::new(self.addr.ip(), u16::from_be(self.port))
    }
}

impl ShownBackend for BackendV6 {
    fn socket(&self) -> SocketAddr {
        SocketAddr::new(self.addr.ip(), u16::from_be(self.port))
    }
}

/// Decides a new flow `what` from `src` to `fe_key` as the data plane
/// would (`hash`: the flow's), and prints the decision.
fn decide_new<V: View<Entry = ()> + AsMaps>(
    view: &V,
    what: &str,
    fe_key: V::Key,
    src: <V::Key as Key>::Addr,
    from_pod: bool,
    hash: u32,
) where
    V::Backend: ShownBackend,
{
    let maps = view.maps();
    let client = Client::Addr(src);
    let decision = decide::new_flow(view, &fe_key, src, from_pod, &client, now_ns(), || hash);
    let name = || {
        view.frontend(&fe_key)
            .map(|fe| service_name(maps, fe.svc_id))
            .unwrap_or_default()
    };
    match decision {
        Decision::NotOurs => println!("{what}: not a frontend: passed to the kernel untouched"),
        Decision::Refused(reason) => {
            let why = match reason {
                Reason::RejectUnknownPort => {
                    "the address is a frontend but not this port: rejected (TCP RST / ICMP port unreachable)"
                }
                Reason::DropSourceRange => {
                    "the source is outside the Service's loadBalancerSourceRanges: dropped"
                }
                Reason::DropNoLocalBackend => {
                    "traffic policy Local and no ready backend on this node: dropped"
                }
                _ => "no ready backends: rejected (TCP RST / ICMP port unreachable)",
            };
            println!("{what} is {}: {why} [{}]", name(), reason.name());
        }
        Decision::Backend {
            fe,
            id,
            backend,
            by,
        } => {
            let how = match by {
                By::Affinity => format!(
                    "the client's ClientIP affinity entry (timeout {} s)",
                    fe.affinity_timeout_s
                ),
                By::Ring { hash, slot } => format!(
                    "a new flow hashes to {hash:#010x}, Maglev slot {} of {}",
                    slot - fe.ring_offset,
                    fe.ring_size
                ),
            };
            println!(
                "{what} is {}: {how}, backend id {id} = {}",
                service_name(maps, fe.svc_id),
                backend.socket()
            );
        }
    }
}

pub fn stats(pin: &PinArgs) -> Result<()> {
    let maps = open(pin)?;
    println!("{:<26} {:>14}", "REASON", "PACKETS");
    for (reason, n) in maps.reason_totals()? {
        println!("{:<26} {:>14}", reason.name(), n);
    }
    Ok(())
}
