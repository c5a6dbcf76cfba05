//! What a cluster shows of the agents' LoadBalancer pools
//! ([`crate::cluster::LB_POOL`], [`crate::cluster::LB_POOL6`]): the address
//! a Service got, as `xdplb services` lists it, and which node answers ARP
//! or NDP for it, as the router's neighbour table tells it.
use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::Path,
};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::{
    apps::{path_str, xdplb},
    cluster::{Run, LB_POOL, LB_POOL6, NODE_LAN_IFACE},
    netns,
};

/// `xdplb services -o json` on `node`: one row per frontend.
pub fn frontends(bin: &Path, run: &Run, node: &str) -> Result<Vec<Value>> {
    let pin = run.pin_path(node);
    let json = xdplb(
        bin,
        &["services", "-o", "json", "--pin-path", path_str(&pin)?],
    )?;
    serde_json::from_str(&json).context("xdplb services -o json")
}

/// The packet counter `xdplb services` on `node` shows for the Service
/// behind `frontend` (`ip:port/PROTO`).
pub fn frontend_packets(bin: &Path, run: &Run, node: &str, frontend: &str) -> Result<u64> {
    frontends(bin, run, node)?
        .iter()
        .find(|r| r["frontend"] == frontend)
        .and_then(|r| r["packets"].as_u64())
        .with_context(|| format!("{node} has no frontend {frontend}"))
}

/// The address of [`LB_POOL`] that `xdplb services` on `node` lists for
/// Service `service` (`namespace/name`).
pub fn pool_address(bin: &Path, run: &Run, node: &str, service: &str) -> Result<Ipv4Addr> {
    let (first, last) = LB_POOL.split_once('-').context("LB_POOL")?;
    let (first, last): (Ipv4Addr, Ipv4Addr) = (first.parse()?, last.parse()?);
    let prefix = format!("{service}:");
    frontends(bin, run, node)?
        .iter()
        .filter(|r| {
            r["service"]
                .as_str()
                .is_some_and(|s| s.starts_with(&prefix))
        })
        .filter_map(|r| r["frontend"].as_str()?.split(':').next()?.parse().ok())
        .find(|a| (first..=last).contains(a))
        .with_context(|| format!("{node} lists no frontend of {service} in {LB_POOL}"))
}

/// The address of [`LB_POOL6`] that `xdplb services` on `node` lists for
/// Service `service` (`namespace/name`).
pub fn pool_address6(bin: &Path, run: &Run, node: &str, service: &str) -> Result<Ipv6Addr> {
    let (first, last) = LB_POOL6.split_once('-').context("LB_POOL6")?;
    let (first, last): (Ipv6Addr, Ipv6Addr) = (first.parse()?, last.parse()?);
    let prefix = format!("{service}:");
    frontends(bin, run, node)?
        .iter()
        .filter(|r| {
            r["service"]
                .as_str()
                .is_some_and(|s| s.starts_with(&prefix))
        })
        .filter_map(|r| {
            let frontend = r["frontend"].as_str()?.split('/').next()?;
            match frontend.parse::<SocketAddr>().ok()?.ip() {
                IpAddr::V6(a) => Some(a),
                IpAddr::V4(_) => None,
            }
        })
        .find(|a| (first..=last).contains(a))
        .with_context(|| format!("{node} lists no frontend of {service} in {LB_POOL6}"))
}

/// Each node's MAC on the LAN, by node name.
pub fn lan_macs<'a>(
    run: &Run,
    nodes: impl IntoIterator<Item = &'a str>,
) -> Result<BTreeMap<String, String>> {
    nodes
        .into_iter()
        .map(|node| {
            let path = format!("/sys/class/net/{NODE_LAN_IFACE}/address");
            let mac = netns::exec(&run.ns(node), "cat", &[&path])?
                .trim()
                .to_string();
            Ok((node.to_string(), mac))
        })
        .collect()
}

/// The node whose MAC the router's neighbour table holds for `addr`: it
/// must hold exactly one, and it must be one of `macs` (by node name).
pub fn announcer_seen_by_router(
    run: &Run,
    addr: impl Into<IpAddr>,
    macs: &BTreeMap<String, String>,
) -> Result<String> {
    let addr = addr.into();
    let text = netns::exec(
        &run.ns("router"),
        "ip",
        &["neigh", "show", &addr.to_string()],
    )?;
    let seen: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split_whitespace().skip_while(|w| *w != "lladdr").nth(1))
        .collect();
    let [mac] = seen[..] else {
        bail!("the router's neighbour table for {addr}: {text:?}, expected one MAC");
    };
    macs.iter()
        .find(|(_, m)| m.as_str() == mac)
        .map(|(n, _)| n.clone())
        .with_context(|| format!("the router has {mac} for {addr}, no node's MAC"))
}
