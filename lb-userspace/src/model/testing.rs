//! Desired states for tests of what consumes them.
use std::net::Ipv4Addr;

use super::{Backend, DesiredState, Frontend, FrontendKind, Proto, ServicePort, ServicePortId};

pub fn id(name: &str) -> ServicePortId {
    ServicePortId {
        namespace: "default".into(),
        name: name.into(),
        port_name: String::new(),
        protocol: Proto::Tcp,
    }
}

pub fn backend(last: u8) -> Backend {
    backend_at(Ipv4Addr::new(10, 244, 0, last))
}

/// A ready endpoint at `addr`, port 8080, of either family.
pub fn backend_at<A>(addr: A) -> Backend<A> {
    Backend {
        addr,
        port: 8080,
        node_name: None,
        is_local: false,
        ready: true,
        serving: true,
        terminating: false,
    }
}

/// A ClusterIP and a NodePort, on to `backends` (last bytes of pod
/// addresses) under both policies.
pub fn service(vip_last: u8, backends: &[u8]) -> ServicePort {
    let bs: Vec<Backend> = backends.iter().map(|&b| backend(b)).collect();
    ServicePort {
        frontends: vec![
            Frontend {
                addr: Ipv4Addr::new(10, 96, 0, vip_last),
                port: 80,
                kind: FrontendKind::ClusterIp,
                on_node: false,
            },
            Frontend {
                addr: Ipv4Addr::new(192, 168, 0, 1),
                port: 30000 + vip_last as u16,
                kind: FrontendKind::NodePort,
                on_node: true,
            },
        ],
        cluster_backends: bs.clone(),
        external_backends: bs,
        ..Default::default()
    }
}

pub fn state(services: &[(&str, ServicePort)]) -> DesiredState {
    DesiredState {
        services: services.iter().map(|(n, s)| (id(n), s.clone())).collect(),
        problems: Vec::new(),
    }
}
