//! `xdplb agent`: loads the data plane over its pinned maps, attaches it,
//! and keeps the maps equal to the Services it is given.
mod announce;
mod attach;
mod health;
mod ifaces;
mod lb_api;
mod netlink;
mod pins;
mod programming;
mod snat_ports;
mod source;
mod uplink;

pub(crate) use pins::flock_holder;

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use lb_common::{Config, ConfigV6, Reason};
use tokio::signal::unix::SignalKind;

use crate::{
    cli::AgentArgs,
    datapath::{Capacities, Datapath},
    healthcheck::HealthCheckServers,
    http,
    metrics::{self, Metrics},
    model::{self, lb_addrs::Pools, Changes, DesiredState, ModelOptions, NodeInfo},
    sync::{NodeMaps, Room, ServiceMaps, Syncer},
};

pub fn run(args: AgentArgs) -> Result<()> {
    let pins = pins::Layout::new(&args.pin.pin_path);
    if args.cleanup {
        // Nothing may be detached under a running agent.
        let _lock = match args.pin.pin_path.exists() {
            true => Some(pins.lock().context("refusing to clean up")?),
            false => None,
        };
        // Kernels without tcx hold our tc programs as filters, not pins.
        for ifname in ifaces::present() {
            crate::datapath::detach_filters(&ifname);
        }
        return pins.cleanup();
    }
    pins.check_bpffs()?;
    // Before anything is loaded, attached or written, and held until exit.
    let _lock = pins.lock()?;
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(serve(args, pins))
}

struct Agent {
    args: AgentArgs,
    pins: pins::Layout,
    dp: Datapath,
    syncer: Syncer,
    attacher: attach::Attacher,
    last: DesiredState,
    /// The settings last written to `CONFIG`.
    config: Option<(Config, ConfigV6)>,
    health: health::Shared,
    nodeport_cidrs: Vec<(std::net::Ipv4Addr, u8)>,
    nodeport_cidrs_v6: Vec<(std::net::Ipv6Addr, u8)>,
    metrics: Arc<Metrics>,
    trigger_times: programming::TriggerTimes,
    healthchecks: HealthCheckServers,
    /// `drop_snat_ports_exhausted` when last looked at.
    snat_exhausted: u64,
    /// Read once: the node's ephemeral range is set at boot.
    snat_ports: lb_common::snat::SnatPorts,
    /// After a failed sync: when to try again, and the wait after that.
    retry: Option<(Instant, Duration)>,
    /// `--lb-pool` and `--lb-pool-range`.
    pools: Pools,
    announcer: announce::Announcer,
    /// With the API and pools: leases and the status writer.
    lb_api: Option<lb_api::LbApi>,
    /// The nodes the last sync let announce.
    candidates: BTreeSet<String>,
}

impl Agent {
    /// Logs new flows the data plane dropped for want of a source-NAT port
    /// since the last look: the counter alone is easy to miss.
    fn report_snat_exhaustion(&mut self) {
        let Ok(total) = self.dp.maps.reason_total(Reason::DropSnatPortsExhausted) else {
            return;
        };
        if total > self.snat_exhausted {
            tracing::warn!(
                dropped = total - self.snat_exhausted,
                total,
                "new source-NATed flows dropped: no free SNAT port towards their backend"
            );
        }
        self.snat_exhausted = total;
    }

    /// Source NAT uses the first address of each family of the external
    /// interfaces, the address other nodes and the outside reach this node
    /// at, and follows it when it changes.
    fn write_config(&mut self) -> Result<()> {
        let snat = ifaces::nodeport_addresses(&self.args.external_ifaces, &[])?;
        let snat_v6 = ifaces::nodeport_addresses_v6(&self.args.external_ifaces, &[])?;
        let host_netns_cookie = crate::sockdiag::netns_cookie().unwrap_or_else(|e| {
            tracing::warn!(
                "no network namespace cookie ({e}): pods' UDP stays on the socket hooks"
            );
            0
        });
        let config = self.args.conntrack.apply(Config {
            snat_addr: snat
                .first()
                .map(|a| lb_common::addr::to_map(*a))
                .unwrap_or(0),
            snat_ports: self.snat_ports,
            host_netns_cookie,
            ..Config::DEFAULT
        });
        let snat_addr = snat_v6
            .first()
            .map(|a| lb_common::addr::to_map_v6(*a))
            .unwrap_or_default();
        let config_v6 = ConfigV6 {
            snat_addr,
            pods_udp_per_packet: u32::from(self.dp.has_ipv6_path() && snat_addr != [0; 4]),
            _pad: 0,
        };
        if self.config == Some((config, config_v6)) {
            return Ok(());
        }
        if config.snat_addr == 0 {
            tracing::warn!("no IPv4 address on the external interfaces: source NAT disabled");
        }
        match snat_v6.first() {
            Some(addr) => tracing::info!(%addr, "IPv6 source NAT address"),
            None => tracing::info!(
                "no global IPv6 address on the external interfaces: IPv6 source NAT disabled"
            ),
        }
        self.dp.maps.put_config(config)?;
        self.dp.maps.put_config_v6(config_v6)?;
        self.config = Some((config, config_v6));
        Ok(())
    }

    fn resync(&mut self, source: &mut source::Source) -> Result<()> {
        let started = Instant::now();
        self.write_config()?;
        let (objects, report) = source.load()?;
        self.trigger_times.saw(&objects.slices);
        let node = NodeInfo::from_nodes(&self.args.node_name, &objects.nodes);
        health::lock(&self.health)
            .node_eligible(model::node_eligible(&self.args.node_name, &objects.nodes));
        let opts = ModelOptions {
            service_proxy_name: self.args.service_proxy_name.clone(),
            nodeport_addresses: ifaces::with_localhost(
                ifaces::nodeport_addresses(&self.args.external_ifaces, &self.nodeport_cidrs)?,
                self.args.localhost_nodeports,
                &self.nodeport_cidrs,
            ),
            node_addresses: ifaces::ipv4_addresses()?
                .into_iter()
                .map(|(_, addr)| addr)
                .collect(),
            nodeport_addresses_v6: ifaces::nodeport_addresses_v6(
                &self.args.external_ifaces,
                &self.nodeport_cidrs_v6,
            )?,
            // Link-local addresses are every link's, no frontend's.
            node_addresses_v6: ifaces::ipv6_addresses()?
                .into_iter()
                .map(|(_, addr)| addr)
                .filter(|addr| !addr.is_unicast_link_local())
                .collect(),
        };
        let alloc = model::lb_addrs::allocate(&objects.services, &self.pools, &opts);
        let services = alloc.apply(&objects.services, &self.pools);
        let mut desired = model::desired_state(&services, &objects.slices, &node, &opts);
        model::keep_last_good(&self.last, &mut desired);
        // Refused Service ports count as applied: they are retried at every
        // sync and reported in xdplb_service_ports_refused.
        let changes = Changes::between(&self.last, &desired);
        self.metrics.record_pending(changes);
        for p in report.problems.iter().chain(&desired.problems) {
            tracing::warn!(object = %p.object, "skipped: {}", p.message);
        }
        let sync = self.syncer.sync(&desired, &mut self.dp.maps)?;
        for r in &sync.refused {
            tracing::warn!(service = %r.service, "refused: {}", r.reason);
        }
        // A LoadBalancer Service without its address is served otherwise,
        // like a Service port refused for want of room.
        for p in &alloc.problems {
            tracing::warn!(object = %p.object, "refused: {}", p.message);
        }
        health::lock(&self.health).refused(
            sync.refused
                .iter()
                .map(|r| format!("{}: {}", r.service, r.reason))
                .chain(alloc.problems.iter().map(|p| p.to_string()))
                .collect(),
        );
        let skipped = report.problems.len() + desired.problems.len();
        let reconcile = Instant::now();
        let forgotten =
            crate::sync::stale::forget(&mut self.dp.maps, &sync.removed, &sync.removed_v6)?;
        self.metrics
            .record_conntrack_reconcile(reconcile.elapsed(), [forgotten.flows, forgotten.flows_v6]);
        if forgotten.entries > 0 {
            tracing::info!(
                entries = forgotten.entries,
                "forgot UDP flows and affinities of removed backends"
            );
        }
        let removed: Vec<_> = sync
            .removed
            .iter()
            .map(|&(_, a, p)| (std::net::IpAddr::V4(a), p))
            .chain(
                sync.removed_v6
                    .iter()
                    .map(|&(_, a, p)| (std::net::IpAddr::V6(a), p)),
            )
            .collect();
        match crate::sockdiag::close_udp_connected_to(&removed) {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                sockets = n,
                "closed UDP sockets connected to removed backends"
            ),
            Err(e) => tracing::warn!("cannot close UDP sockets of removed backends: {e:#}"),
        }
        tracing::info!(
            services = sync.services,
            frontends = sync.frontends,
            backends = sync.backends,
            writes = sync.writes,
            skipped,
            refused = sync.refused.len(),
            ms = started.elapsed().as_secs_f64() * 1e3,
            "synced"
        );
        self.metrics
            .record_sync(started.elapsed(), &sync, &desired, skipped, changes);
        self.healthchecks.update(&desired);
        self.last = desired;
        self.metrics
            .record_lb_pools(&alloc.usage(&self.pools), alloc.exhausted);
        let ready = model::lb_addrs::ready_nodes(&objects.nodes);
        self.candidates = match &self.lb_api {
            Some(api) => {
                let changes =
                    model::lb_addrs::status_changes(&objects.services, &alloc, &self.pools, &opts);
                api.saw(ready.contains(&self.args.node_name), changes);
                api.candidates(&self.candidates)
            }
            None => ready,
        };
        let announcements =
            model::lb_addrs::announcements(&services, &objects.slices, &self.candidates, &alloc);
        let node = Some(self.args.node_name.as_str());
        self.metrics.record_announced(
            announcements
                .iter()
                .filter(|a| a.node.as_deref() == node)
                .count(),
        );
        self.announcer.sync(
            &mut self.dp.maps,
            &self.args.external_ifaces,
            &announcements,
            &self.args.node_name,
        )?;
        Ok(())
    }

    /// A resync after a change reached the agent, with its outcome
    /// reported to health and metrics; a failed sync leaves the maps as
    /// they were, and the change counts as queued until a sync succeeds.
    fn resync_after_change(&mut self, source: &mut source::Source) {
        // Before the sync: one that hangs leaves the change queued, and
        // /healthz fails once it is late.
        health::lock(&self.health).queued();
        self.metrics.record_queued();
        match self.resync(source) {
            Ok(()) => {
                for latency in self.trigger_times.applied(jiff::Timestamp::now()) {
                    self.metrics.observe_network_programming(latency);
                }
                health::lock(&self.health).synced();
                self.retry = None;
            }
            Err(e) => {
                // Nothing may arrive to trigger the next sync, so the agent
                // retries by itself, backing off to once every 30 s.
                let wait = self.retry.map_or(Duration::from_secs(1), |(_, w)| {
                    (w * 2).min(Duration::from_secs(30))
                });
                tracing::error!(
                    retry_in_s = wait.as_secs(),
                    "sync failed, data plane keeps its last state: {e:#}"
                );
                health::lock(&self.health).failed(format!("{e:#}"));
                self.retry = Some((Instant::now() + wait, wait));
            }
        }
    }

    fn retry_due(&self) -> bool {
        self.retry.is_some_and(|(at, _)| Instant::now() >= at)
    }

    fn attach_pod_ifaces(&mut self) {
        let present = ifaces::present();
        self.attacher.prune(&self.pins, &present);
        for name in &present {
            let wanted = self
                .args
                .pod_ifaces
                .iter()
                .any(|g| ifaces::matches(g, name));
            if wanted && !self.attacher.attached().contains(name) {
                if let Err(e) = self.attacher.attach(&mut self.dp, &self.pins, name, true) {
                    tracing::warn!(ifname = %name, "cannot attach: {e:#}");
                }
            }
        }
    }
}

/// Maps an earlier agent pinned keep their size; say so where the flags
/// asked for another.
fn report_pinned_sizes(wanted: &Capacities, room: &Room) {
    for (flag, want, have) in [
        ("--max-service-ports", wanted.services, room.services),
        ("--max-frontends", wanted.frontends, room.frontends),
        ("--max-frontend-addrs", wanted.addrs, room.addrs),
        ("--max-endpoints", wanted.backends, room.backends),
        ("--maglev-slots", wanted.maglev_slots, room.ring_slots),
    ] {
        if want != have {
            tracing::warn!(
                flag,
                wanted = want,
                pinned = have,
                "a pinned map keeps its size; the new one applies after `xdplb agent --cleanup`"
            );
        }
    }
}

async fn serve(args: AgentArgs, pins: pins::Layout) -> Result<()> {
    let pools = Pools::parse(&args.lb_pool, &args.lb_pool_range).map_err(anyhow::Error::msg)?;
    // Before the initial lists: changes made while they load are this
    // agent's to program.
    let trigger_times = programming::TriggerTimes::new(jiff::Timestamp::now());
    let health: health::Shared = Arc::new(Mutex::new(health::Health::default()));
    let metrics = Arc::new(Metrics::new());
    // Before the initial lists and the first sync, which take seconds at
    // 10,000 Services: /livez answers meanwhile, /healthz says not ready.
    let _healthz_server = http::Server::start(
        "healthz",
        args.healthz_addr,
        health::routes(&health, &metrics.probes()),
        http::Limits::PROBES,
        metrics.http_status("healthz"),
    );
    let mut source = source::Source::open(&args).await?;
    let lb_api = match source.client() {
        Some(client) if !pools.is_empty() => {
            let namespace = args
                .namespace
                .clone()
                .unwrap_or_else(|| client.default_namespace().to_string());
            Some(lb_api::LbApi::start(client, &namespace, &args.node_name, metrics.clone()).await)
        }
        _ => None,
    };
    let wanted = args.capacities.capacities();
    let mut dp = Datapath::load(&wanted, Some(&pins.maps_dir()))?;
    report_pinned_sizes(&wanted, &dp.maps.room()?);
    let syncer = Syncer::recover(&mut dp.maps)?;
    let nodeport_cidrs = args
        .nodeport_addresses
        .iter()
        .map(|c| ifaces::parse_cidr(c))
        .collect::<Result<Vec<_>>>()?;
    let (nodeport_cidrs, nodeport_cidrs_v6) = ifaces::split_cidrs(&nodeport_cidrs);
    // Drops counted before this start (the counters are pinned) were
    // reported by the agent that saw them.
    let snat_exhausted = dp
        .maps
        .reason_total(Reason::DropSnatPortsExhausted)
        .unwrap_or(0);
    let mut agent = Agent {
        attacher: attach::Attacher::new(args.xdp_mode),
        args,
        pins,
        dp,
        syncer,
        last: DesiredState::default(),
        config: None,
        health: health.clone(),
        nodeport_cidrs,
        nodeport_cidrs_v6,
        metrics: metrics.clone(),
        trigger_times,
        healthchecks: HealthCheckServers::new(
            {
                let health = health.clone();
                Arc::new(move || health::lock(&health).healthy())
            },
            metrics.http_status("healthcheck"),
        ),
        snat_exhausted,
        snat_ports: snat_ports::of_this_node(),
        retry: None,
        pools,
        announcer: announce::Announcer::default(),
        lb_api,
        candidates: BTreeSet::new(),
    };
    // Maps first, then the program on the wire: the first packet it sees
    // already finds every Service. A first sync that fails leaves the
    // pinned maps serving what they held and is retried; crashing would
    // only fail the same way again.
    agent.resync_after_change(&mut source);
    for ifname in agent.args.external_ifaces.clone() {
        agent
            .attacher
            .attach(&mut agent.dp, &agent.pins, &ifname, false)?;
    }
    let cgroup_pins = agent.pins.version_dir().join("cgroup");
    let cgroup = &agent.args.cgroup_path;
    if let Err(e) = crate::datapath::attach_cgroup(&mut agent.dp, cgroup, Some(&cgroup_pins)) {
        tracing::warn!("host-network clients reach no Service: {e:#}");
    }
    agent.attach_pod_ifaces();
    agent.pins.remove_old_versions()?;
    health::lock(&health).started();

    // The metrics server reads its own handle on the pinned maps, so a
    // scrape never waits for the agent loop.
    let metrics_addr = agent.args.metrics_addr;
    let slots = agent.dp.maps.slots().clone();
    let _metrics_server =
        metrics::serve(metrics_addr, metrics.clone(), agent.pins.maps_dir(), slots)
            .inspect_err(|e| tracing::error!("no metrics server on {metrics_addr}: {e:#}"));
    let mut term = tokio::signal::unix::signal(SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(SignalKind::interrupt())?;
    // Link and address events act at once; the once-a-second poll of pod
    // interfaces stays as a safety net.
    let mut node_changes = netlink::Changes::subscribe()?;
    let mut ticks = tokio::time::interval(Duration::from_secs(1));
    tracing::info!(node = %agent.args.node_name, "agent running");
    loop {
        tokio::select! {
            changed = source.changed() => {
                changed?;
                agent.resync_after_change(&mut source);
            }
            changed = node_changes.next() => {
                let changed = changed?;
                if changed.links {
                    agent.attach_pod_ifaces();
                }
                // NodePorts follow the node's addresses.
                if changed.addrs {
                    agent.resync_after_change(&mut source);
                }
            }
            _ = ticks.tick() => {
                // A lease lapses without an event.
                let lapsed = agent
                    .lb_api
                    .as_ref()
                    .is_some_and(|api| api.candidates(&agent.candidates) != agent.candidates);
                if agent.retry_due() || lapsed {
                    agent.resync_after_change(&mut source);
                }
                agent.attach_pod_ifaces();
                agent.report_snat_exhaustion();
                if let Some(status) = source.status() {
                    health::lock(&agent.health).source(&status);
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    // Another node is to answer for this node's LoadBalancer addresses
    // once it is gone: with the API it sees the node lease released below,
    // with --manifests once the Node turns NotReady.
    if let Err(e) = agent.announcer.withdraw(&mut agent.dp.maps) {
        tracing::warn!("still answering ARP for LoadBalancer addresses: {e:#}");
    }
    if let Some(api) = agent.lb_api.take() {
        api.stop().await;
    }
    tracing::info!(
        "exiting; links and maps stay pinned, the data plane keeps serving all but ARP for LoadBalancer addresses"
    );
    Ok(())
}
