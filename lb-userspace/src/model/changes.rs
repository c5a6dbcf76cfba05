//! Service and endpoint changes between two desired states, counted the
//! way kube-proxy's change trackers count theirs for
//! `kubeproxy_sync_proxy_rules_{service,endpoint}_changes_*`. kube-proxy
//! counts informer events; the agent gets a whole desired state per sync,
//! so a change is a Service port whose Service part, or whose endpoint set,
//! differs between two states, appearing and disappearing included.
use super::{DesiredState, ServicePort};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub services: u64,
    pub endpoints: u64,
}

/// The two halves of a Service port. Destructured field by field so that a
/// new field does not compile until it is put in one of them.
fn halves(sp: &ServicePort) -> (impl PartialEq + '_, impl PartialEq + '_) {
    let ServicePort {
        frontends,
        cluster_backends,
        external_backends,
        session_affinity_timeout_s,
        external_policy_local,
        internal_policy_local,
        load_balancer_source_ranges,
        load_balancer_source_ranges_v6,
        health_check_node_port,
        local_endpoints,
        frontends_v6,
        cluster_backends_v6,
        external_backends_v6,
    } = sp;
    (
        (
            frontends,
            frontends_v6,
            session_affinity_timeout_s,
            external_policy_local,
            internal_policy_local,
            load_balancer_source_ranges,
            load_balancer_source_ranges_v6,
            health_check_node_port,
        ),
        (
            cluster_backends,
            external_backends,
            local_endpoints,
            cluster_backends_v6,
            external_backends_v6,
        ),
    )
}

impl Changes {
    /// What it takes to go from `old` to `new`.
    pub fn between(old: &DesiredState, new: &DesiredState) -> Self {
        let mut changes = Self::default();
        // Both maps are ordered by id: one merged walk, as in the syncer.
        let mut old_ports = old.services.iter().peekable();
        for (id, sp) in &new.services {
            while let Some((_, gone)) = old_ports.next_if(|(o, _)| *o < id) {
                changes.count(Some(gone), None);
            }
            let before = old_ports.next_if(|(o, _)| *o == id).map(|(_, sp)| sp);
            changes.count(before, Some(sp));
        }
        for (_, gone) in old_ports {
            changes.count(Some(gone), None);
        }
        changes
    }

    /// A Service port that comes or goes is a Service change, and an
    /// endpoint change when it has endpoints, as a Service and its
    /// EndpointSlices are separate objects to kube-proxy.
    fn count(&mut self, before: Option<&ServicePort>, after: Option<&ServicePort>) {
        let none = ServicePort::default();
        let (service_before, endpoints_before) = halves(before.unwrap_or(&none));
        let (service_after, endpoints_after) = halves(after.unwrap_or(&none));
        if before.is_none() != after.is_none() || service_before != service_after {
            self.services += 1;
        }
        if endpoints_before != endpoints_after {
            self.endpoints += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::testing::{service, state};

    fn changes(services: u64, endpoints: u64) -> Changes {
        Changes {
            services,
            endpoints,
        }
    }

    #[test]
    fn each_service_port_counts_once_per_half_that_differs() {
        let old = state(&[
            ("same", service(1, &[1])),
            ("moved", service(2, &[2])),
            ("scaled", service(3, &[3])),
            ("both", service(4, &[4])),
            ("gone", service(5, &[5])),
            ("gone-empty", service(6, &[])),
        ]);
        let new = state(&[
            ("added", service(7, &[7])),
            ("added-empty", service(8, &[])),
            ("both", service(40, &[4, 41])),
            ("moved", service(20, &[2])),
            ("same", service(1, &[1])),
            ("scaled", service(3, &[3, 31])),
        ]);
        // Services: added, added-empty, both, moved, gone, gone-empty.
        // Endpoints: added, both, scaled, gone.
        assert_eq!(Changes::between(&old, &new), changes(6, 4));
        assert_eq!(Changes::between(&new, &new), changes(0, 0));
        assert_eq!(
            Changes::between(&DesiredState::default(), &new),
            changes(6, 5)
        );
    }

    #[test]
    fn a_policy_is_the_services_an_endpoint_count_the_endpoints() {
        let old = state(&[("web", service(1, &[1]))]);
        let mut local = service(1, &[1]);
        local.external_policy_local = true;
        assert_eq!(
            Changes::between(&old, &state(&[("web", local)])),
            changes(1, 0)
        );
        let mut fewer_local = service(1, &[1]);
        fewer_local.local_endpoints = 1;
        assert_eq!(
            Changes::between(&old, &state(&[("web", fewer_local)])),
            changes(0, 1)
        );
    }
}
