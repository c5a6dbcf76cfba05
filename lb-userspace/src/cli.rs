//! The `xdplb` command line. The subcommand and flag names are a contract
//! with operators and scripts: keep them.
use std::{fmt, net::SocketAddr, path::PathBuf, str::FromStr};

use clap::{Args, Parser, Subcommand, ValueEnum};
use lb_common::Config;

use crate::datapath::XdpMode;

pub const DEFAULT_PIN_PATH: &str = "/sys/fs/bpf/xdplb";

#[derive(Parser, Debug)]
#[command(
    name = "xdplb",
    version,
    about = "XDP Kubernetes Service load balancer (kube-proxy replacement)"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the node agent: load and attach the data plane, keep its maps equal to the Services.
    Agent(Box<AgentArgs>),
    /// Frontends and the backends they balance to, with counters.
    Services(InspectArgs),
    /// Connection-tracking entries.
    Flows(InspectArgs),
    /// Which backend a flow gets, and why.
    Explain(ExplainArgs),
    /// Packet path counters: translations, drops and rejects by reason.
    Stats(PinArgs),
    /// Drops, rejects, new flows and socket decisions as they happen, one line each, until Ctrl-C.
    Monitor(MonitorArgs),
}

#[derive(Args, Debug, Clone)]
pub struct PinArgs {
    /// Directory on a bpffs where the agent pins its maps and links.
    #[arg(long, default_value = DEFAULT_PIN_PATH)]
    pub pin_path: PathBuf,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Args, Debug, Clone)]
pub struct InspectArgs {
    #[command(flatten)]
    pub pin: PinArgs,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
    pub output: Output,
    #[command(flatten)]
    pub filter: Filter,
}

/// Which rows to show.
#[derive(Args, Debug, Clone, Default)]
pub struct Filter {
    /// Only this Service: "namespace/name", "namespace/name:port" (the
    /// port's name, empty for an unnamed one) or "namespace/name:port/PROTO".
    #[arg(long)]
    pub service: Option<String>,
    /// Only rows with this address: a frontend or backend, or a flow's
    /// source, destination or translated address.
    #[arg(long)]
    pub addr: Option<std::net::IpAddr>,
}

impl Filter {
    /// Whether the Service port named `encoded` ("ns/name:port/PROTO") passes.
    pub fn service(&self, encoded: &str) -> bool {
        let Some(want) = &self.service else {
            return true;
        };
        let Some(p) = lb_common::SvcNameParts::parse(encoded) else {
            return encoded == want;
        };
        let service = |s: &str| s.split_once('/') == Some((p.namespace, p.name));
        match want.split_once(':') {
            None => service(want),
            Some((s, port)) if !port.contains('/') => service(s) && port == p.port,
            Some(_) => encoded == want,
        }
    }

    /// Whether a row with these addresses passes.
    pub fn addr<A: Into<std::net::IpAddr> + Copy>(&self, addrs: &[A]) -> bool {
        self.addr
            .is_none_or(|want| addrs.iter().any(|&a| a.into() == want))
    }
}

#[derive(Args, Debug, Clone)]
pub struct MonitorArgs {
    /// Pin path, output (a table, or one JSON object per line) and filters.
    #[command(flatten)]
    pub view: InspectArgs,
    /// Only events counted under this reason, as `xdplb stats` names it
    /// (reject_no_backend, drop_source_range, xlate_new_flow, ...); repeat
    /// for several.
    #[arg(long = "reason", value_name = "NAME")]
    pub reasons: Vec<String>,
}

#[derive(Args, Debug, Clone)]
pub struct ExplainArgs {
    /// Client address, optionally with its port (default 40000): 10.0.0.5 or 10.0.0.5:51000.
    pub src: String,
    /// Frontend address and port: 10.96.0.10:80.
    pub dst: String,
    /// Transport protocol.
    #[arg(value_parser = ["tcp", "udp"], default_value = "tcp")]
    pub proto: String,
    /// The flow enters on a pod interface (in-cluster: loadBalancerSourceRanges
    /// do not apply).
    #[arg(long)]
    pub from_pod: bool,
    #[command(flatten)]
    pub pin: PinArgs,
}

#[derive(Args, Debug, Clone)]
pub struct AgentArgs {
    /// Read Services, EndpointSlices and Nodes from the manifests in this folder
    /// (*.yaml, *.yml, *.json; watched for changes) instead of the Kubernetes API.
    #[arg(long)]
    pub manifests: Option<PathBuf>,
    /// Kubeconfig for the Kubernetes API (without --manifests); in-cluster
    /// configuration when neither this nor KUBECONFIG is set.
    #[arg(long, env = "KUBECONFIG", conflicts_with = "manifests")]
    pub kubeconfig: Option<PathBuf>,
    /// This node's name, as in the Node object and endpoints' nodeName.
    #[arg(long, env = "NODE_NAME", default_value_t = hostname())]
    pub node_name: String,
    /// Interfaces facing the outside (NICs): the program is attached to each, and
    /// their IPv4 and IPv6 addresses serve NodePorts unless --nodeport-addresses
    /// says otherwise for that family.
    #[arg(long, value_delimiter = ',', required_unless_present = "cleanup")]
    pub external_ifaces: Vec<String>,
    /// Pod-facing interfaces to attach to as they appear (globs with '*').
    #[arg(long, value_delimiter = ',', default_value = "veth*,cali*,lxc*")]
    pub pod_ifaces: Vec<String>,
    /// XDP attach mode: auto tries native (driver) mode and falls back to
    /// generic, and on a veth whose peer takes no XDP frames runs the path
    /// at tc instead; native and generic attach XDP everywhere.
    #[arg(long, value_enum, default_value = "auto")]
    pub xdp_mode: XdpMode,
    #[command(flatten)]
    pub pin: PinArgs,
    /// Address of the /healthz endpoint (kube-proxy's port).
    #[arg(long, default_value = "0.0.0.0:10256")]
    pub healthz_addr: SocketAddr,
    /// Address of the Prometheus /metrics endpoint (kube-proxy's port).
    /// Loopback by default, as kube-proxy's: the metrics name every Service,
    /// and on a node address any pod could read them.
    #[arg(long, default_value = "127.0.0.1:10249")]
    pub metrics_addr: SocketAddr,
    /// CIDRs, of either family, whose local addresses serve NodePorts
    /// (kube-proxy's --nodeport-addresses). A family without a CIDR here
    /// serves NodePorts on the external interfaces' addresses of that family.
    #[arg(long, value_delimiter = ',')]
    pub nodeport_addresses: Vec<String>,
    /// Serve NodePorts on 127.0.0.1 (and every address of 127.0.0.0/8) to
    /// the node's own processes, as kube-proxy's iptables mode does by
    /// default (its --iptables-localhost-nodeports); IPv4 only, as there.
    /// Left out when --nodeport-addresses has IPv4 CIDRs and none holds
    /// 127.0.0.1.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub localhost_nodeports: bool,
    /// LoadBalancer address pools, IPv4 CIDRs (network and broadcast
    /// addresses left out). A LoadBalancer Service without a status address
    /// and with spec.loadBalancerClass unset or xdplb.io/l2 gets one, and one
    /// Ready node answers ARP for it on its external interfaces.
    #[arg(long, value_delimiter = ',', value_name = "CIDR")]
    pub lb_pool: Vec<String>,
    /// LoadBalancer address pools as IPv4 ranges, both ends included
    /// (192.168.1.240-192.168.1.250); as --lb-pool otherwise.
    #[arg(long, value_delimiter = ',', value_name = "FIRST-LAST")]
    pub lb_pool_range: Vec<String>,
    /// The agents' namespace (with the Kubernetes API and LoadBalancer pools):
    /// where they hold the Lease of the LoadBalancer status writer and one
    /// Lease per node. Default: the in-cluster service account's namespace,
    /// else the kubeconfig context's.
    #[arg(long, env = "POD_NAMESPACE")]
    pub namespace: Option<String>,
    /// Serve Services labelled service.kubernetes.io/service-proxy-name=<this>.
    #[arg(long)]
    pub service_proxy_name: Option<String>,
    /// cgroup v2 directory whose processes reach Services by socket-level
    /// translation, as the node's own processes must (XDP never sees their
    /// packets). It acts on every process below it, whatever its network
    /// namespace, so each node of a one-machine testbed needs its own.
    /// Default: the cgroup v2 root, as /proc/mounts shows it.
    #[arg(long, default_value_os_t = default_cgroup_path())]
    pub cgroup_path: PathBuf,
    /// Remove everything the agent installed (links, pinned maps) and exit.
    #[arg(long)]
    pub cleanup: bool,
    #[command(flatten)]
    pub capacities: CapacityArgs,
    #[command(flatten)]
    pub conntrack: ConntrackArgs,
}

/// Connection-tracking idle timeouts, under kube-proxy's flag names and in
/// its Go duration syntax (24h, 1h30m, 45s), so that a node moving off
/// kube-proxy keeps its settings. They apply to flows as their packets
/// come; a restart of the agent changes them for every flow.
#[derive(clap::Args, Debug, Clone)]
pub struct ConntrackArgs {
    /// Idle timeout for established TCP connections.
    #[arg(long, default_value_t = Timeout(Config::DEFAULT.tcp_established_timeout_s))]
    pub conntrack_tcp_timeout_established: Timeout,
    /// Idle timeout for UDP flows that have seen no reply.
    #[arg(long, default_value_t = Timeout(Config::DEFAULT.udp_unreplied_timeout_s))]
    pub conntrack_udp_timeout: Timeout,
    /// Idle timeout for UDP flows that have seen a reply.
    #[arg(long, default_value_t = Timeout(Config::DEFAULT.udp_timeout_s))]
    pub conntrack_udp_timeout_stream: Timeout,
}

impl ConntrackArgs {
    /// `config` with these timeouts.
    pub fn apply(&self, config: Config) -> Config {
        Config {
            tcp_established_timeout_s: self.conntrack_tcp_timeout_established.0,
            udp_unreplied_timeout_s: self.conntrack_udp_timeout.0,
            udp_timeout_s: self.conntrack_udp_timeout_stream.0,
            ..config
        }
    }
}

/// A timeout in whole seconds, written as a Go duration: numbers each
/// followed by h, m or s. Parsed here rather than by a duration crate:
/// those read other syntaxes than the one kube-proxy's flags take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeout(pub u32);

impl FromStr for Timeout {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut total = 0u64;
        let mut digits = String::new();
        for c in s.chars() {
            if c.is_ascii_digit() {
                digits.push(c);
                continue;
            }
            let unit = match c {
                'h' => 3600,
                'm' => 60,
                's' => 1,
                _ => return Err(format!("{s:?}: {c:?} is no unit (h, m or s)")),
            };
            let n: u64 = digits
                .parse()
                .map_err(|_| format!("{s:?}: a number must come before {c:?}"))?;
            digits.clear();
            total = total.saturating_add(n.saturating_mul(unit));
        }
        if !digits.is_empty() {
            return Err(format!("{s:?}: {digits} needs a unit (h, m or s)"));
        }
        if total == 0 {
            return Err(format!("{s:?}: a timeout is at least 1s"));
        }
        u32::try_from(total)
            .map(Timeout)
            .map_err(|_| format!("{s:?}: at most {} seconds", u32::MAX))
    }
}

impl fmt::Display for Timeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (h, m, s) = (self.0 / 3600, self.0 / 60 % 60, self.0 % 60);
        if h > 0 {
            write!(f, "{h}h")?;
        }
        if m > 0 {
            write!(f, "{m}m")?;
        }
        if s > 0 || self.0 == 0 {
            write!(f, "{s}s")?;
        }
        Ok(())
    }
}

/// Map sizes, in entries. They apply when the maps are created; maps an
/// earlier agent pinned keep their size (a live map cannot grow without
/// losing its flows) until `xdplb agent --cleanup`. What does not fit is
/// refused per Service port and reported.
#[derive(clap::Args, Debug, Clone)]
pub struct CapacityArgs {
    /// Service ports (SVC_NAMES, SVC_STATS).
    #[arg(long, default_value_t = lb_common::MAX_SERVICES)]
    pub max_service_ports: u32,
    /// Frontends: (address, port, protocol) over all Services (FRONTENDS_V4).
    #[arg(long, default_value_t = lb_common::MAX_FRONTENDS)]
    pub max_frontends: u32,
    /// Distinct Service addresses off the node (ADDRS_V4).
    #[arg(long, default_value_t = lb_common::MAX_ADDRS)]
    pub max_frontend_addrs: u32,
    /// Distinct endpoints (address, port) over all Services (BACKENDS_V4).
    #[arg(long, default_value_t = lb_common::MAX_BACKENDS)]
    pub max_endpoints: u32,
    /// Maglev lookup-table slots over all Services, about 100 per endpoint
    /// per traffic class (MAGLEV_SLOTS).
    #[arg(long, default_value_t = lb_common::MAX_MAGLEV_SLOTS)]
    pub maglev_slots: u32,
    /// Tracked connections, each direction one entry (CT_V4, LRU).
    #[arg(long, default_value_t = lb_common::MAX_CT)]
    pub max_conntrack: u32,
}

impl CapacityArgs {
    pub fn capacities(&self) -> crate::datapath::Capacities {
        crate::datapath::Capacities {
            addrs: self.max_frontend_addrs,
            frontends: self.max_frontends,
            backends: self.max_endpoints,
            maglev_slots: self.maglev_slots,
            ct: self.max_conntrack,
            services: self.max_service_ports,
        }
    }
}

fn default_cgroup_path() -> PathBuf {
    crate::datapath::cgroup2_root().unwrap_or_else(|| "/sys/fs/cgroup".into())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_read_go_durations_and_refuse_the_rest() {
        for (text, secs) in [
            ("24h", 86_400),
            ("1h30m", 5_400),
            ("45s", 45),
            ("2m5s", 125),
        ] {
            let t: Timeout = text.parse().unwrap();
            assert_eq!(t, Timeout(secs), "{text}");
            assert_eq!(t.to_string(), text, "written back as read");
        }
        for bad in ["", "0s", "30", "1.5s", "10ms", "h", "5d", "-1s", "1193047h"] {
            assert!(bad.parse::<Timeout>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn conntrack_flags_default_to_the_data_planes_and_set_its_config() {
        let agent = |extra: &[&str]| {
            let base = ["xdplb", "agent", "--external-ifaces", "eth0"];
            let cli = Cli::parse_from(base.iter().chain(extra));
            let Command::Agent(args) = cli.command else {
                panic!("not the agent")
            };
            args.conntrack.apply(Config::DEFAULT)
        };
        assert_eq!(agent(&[]), Config::DEFAULT);
        let set = agent(&[
            "--conntrack-tcp-timeout-established",
            "1h",
            "--conntrack-udp-timeout",
            "10s",
            "--conntrack-udp-timeout-stream",
            "2m",
        ]);
        assert_eq!(
            (
                set.tcp_established_timeout_s,
                set.udp_unreplied_timeout_s,
                set.udp_timeout_s
            ),
            (3600, 10, 120)
        );
    }

    #[test]
    fn metrics_default_to_loopback() {
        let cli = Cli::parse_from(["xdplb", "agent", "--external-ifaces", "eth0"]);
        let Command::Agent(args) = cli.command else {
            panic!("not the agent")
        };
        assert_eq!(args.metrics_addr, "127.0.0.1:10249".parse().unwrap());
    }

    #[test]
    fn a_service_filter_names_a_service_a_port_or_a_port_and_protocol() {
        let named = |s: &str| Filter {
            service: Some(s.into()),
            ..Filter::default()
        };
        let encoded = "default/web:http/TCP";
        for (want, passes) in [
            ("default/web", true),
            ("default/web:http", true),
            ("default/web:http/TCP", true),
            ("default/web:http/UDP", false),
            ("default/web:metrics", false),
            ("default/web:", false),
            ("other/web", false),
        ] {
            assert_eq!(named(want).service(encoded), passes, "{want}");
        }
        assert!(
            named("default/db:").service("default/db:/TCP"),
            "unnamed port"
        );
    }

    #[test]
    fn lb_pools_take_lists_and_repeats() {
        let cli = Cli::parse_from([
            "xdplb",
            "agent",
            "--external-ifaces",
            "eth0",
            "--lb-pool",
            "192.168.1.240/29,10.0.0.0/30",
            "--lb-pool-range",
            "192.168.2.1-192.168.2.9",
            "--lb-pool-range",
            "192.168.3.1-192.168.3.2",
        ]);
        let Command::Agent(args) = cli.command else {
            panic!("not the agent")
        };
        assert_eq!(args.lb_pool, ["192.168.1.240/29", "10.0.0.0/30"]);
        assert_eq!(
            args.lb_pool_range,
            ["192.168.2.1-192.168.2.9", "192.168.3.1-192.168.3.2"]
        );
    }

    #[test]
    fn monitor_takes_several_reasons() {
        let cli = Cli::parse_from([
            "xdplb",
            "monitor",
            "-o",
            "json",
            "--reason",
            "drop_source_range",
            "--reason",
            "reject_no_backend",
        ]);
        let Command::Monitor(args) = cli.command else {
            panic!("not the monitor")
        };
        assert_eq!(args.view.output, Output::Json);
        assert_eq!(args.reasons, ["drop_source_range", "reject_no_backend"]);
    }
}
