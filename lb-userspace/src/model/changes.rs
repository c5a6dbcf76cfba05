//! Service and endpoint changes between two desired states, counted the
//! way kube-proxy's change trackers count theirs for
//! `kubeproxy_sync_proxy_rules_{service,endpoint}_changes_*`. kube-proxy
//! counts informer events; the agent gets a whole desired state per sync,
//! so a change is a Service port whose Service part, or whose endpoint set,
//! differs between two states, appearing and disappearing included. As
//! kube-proxy's per-family proxiers, each family counts the Service ports
//! that have frontends of that family, and their parts of that family.
use super::{DesiredState, ServicePort};

/// The changes of one address family.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FamilyChanges {
    pub services: u64,
    pub endpoints: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub ipv4: FamilyChanges,
    pub ipv6: FamilyChanges,
}

/// The two halves of a Service port, IPv4 then IPv6, each a Service part
/// and an endpoint part. Destructured field by field so that a new field
/// does not compile until it is put in one of them.
#[allow(clippy::type_complexity)]
fn halves(
    sp: &ServicePort,
) -> (
    (impl PartialEq + '_, impl PartialEq + '_),
    (impl PartialEq + '_, impl PartialEq + '_),
) {
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
    let policies = (
        session_affinity_timeout_s,
        external_policy_local,
        internal_policy_local,
        health_check_node_port,
    );
    (
        (
            (frontends, policies, load_balancer_source_ranges),
            (cluster_backends, external_backends, local_endpoints),
        ),
        (
            (frontends_v6, policies, load_balancer_source_ranges_v6),
            (cluster_backends_v6, external_backends_v6, local_endpoints),
        ),
    )
}

impl FamilyChanges {
    /// A Service port that comes or goes is a Service change, and an
    /// endpoint change when it has endpoints, as a Service and its
    /// EndpointSlices are separate objects to kube-proxy. `present`:
    /// whether it has frontends of this family before and after.
    fn count<S: PartialEq, E: PartialEq>(
        &mut self,
        present: (bool, bool),
        (service_before, endpoints_before): (S, E),
        (service_after, endpoints_after): (S, E),
    ) {
        if present == (false, false) {
            return;
        }
        if present.0 != present.1 || service_before != service_after {
            self.services += 1;
        }
        if endpoints_before != endpoints_after {
            self.endpoints += 1;
        }
    }
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

    fn count(&mut self, before: Option<&ServicePort>, after: Option<&ServicePort>) {
        let none = ServicePort::default();
        let (b, a) = (before.unwrap_or(&none), after.unwrap_or(&none));
        let ((v4_before, v6_before), (v4_after, v6_after)) = (halves(b), halves(a));
        self.ipv4.count(
            (!b.frontends.is_empty(), !a.frontends.is_empty()),
            v4_before,
            v4_after,
        );
        self.ipv6.count(
            (!b.frontends_v6.is_empty(), !a.frontends_v6.is_empty()),
            v6_before,
            v6_after,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::testing::{service, state};

    fn changes(services: u64, endpoints: u64) -> Changes {
        Changes {
            ipv4: FamilyChanges {
                services,
                endpoints,
            },
            ipv6: FamilyChanges::default(),
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

    /// Each family counts its own part of the Service ports that have its
    /// frontends; a shared setting is a change of both.
    #[test]
    fn each_family_counts_its_own_part() {
        use std::net::Ipv6Addr;

        use crate::model::{testing::backend_at, Frontend, FrontendKind};
        let v6_frontend = Frontend {
            addr: "fd00:96::1".parse::<Ipv6Addr>().unwrap(),
            port: 80,
            kind: FrontendKind::ClusterIp,
            on_node: false,
        };
        let v6_backend = |last: u16| backend_at(Ipv6Addr::new(0xfd00, 0x244, 0, 0, 0, 0, 0, last));
        let mut dual = service(1, &[1]);
        dual.frontends_v6 = vec![v6_frontend];
        dual.cluster_backends_v6 = vec![v6_backend(1)];
        let mut v6_only = ServicePort {
            frontends_v6: vec![v6_frontend],
            ..ServicePort::default()
        };
        v6_only.frontends_v6[0].addr = "fd00:96::2".parse().unwrap();
        let old = state(&[("dual", dual.clone()), ("v4", service(2, &[2]))]);
        let mut scaled_v6 = dual.clone();
        scaled_v6.cluster_backends_v6.push(v6_backend(2));
        let mut affinity = dual.clone();
        affinity.session_affinity_timeout_s = Some(60);
        let new = state(&[
            ("dual", scaled_v6),
            ("v4", service(2, &[2, 3])),
            ("v6", v6_only),
        ]);
        let both = |v4: (u64, u64), v6: (u64, u64)| Changes {
            ipv4: FamilyChanges {
                services: v4.0,
                endpoints: v4.1,
            },
            ipv6: FamilyChanges {
                services: v6.0,
                endpoints: v6.1,
            },
        };
        assert_eq!(Changes::between(&old, &new), both((0, 1), (1, 1)));
        assert_eq!(
            Changes::between(
                &old,
                &state(&[("dual", affinity), ("v4", service(2, &[2]))])
            ),
            both((1, 0), (1, 0))
        );
    }
}
