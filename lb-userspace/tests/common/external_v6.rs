//! A dual-stack node seen from outside the cluster, for the IPv6 packet
//! tests: NodePort and LoadBalancer Services written by the agent's model
//! and syncer from manifests, with source NAT to the node's IPv6 address.
use lb_userspace::{datapath::Datapath, model::ModelOptions};

use super::packets_v6::addr;

pub const NODE: &str = "fd00:10::1";
pub const NODE_V4: &str = "192.168.1.1";
pub const NODE_PORT: u16 = 31000;
pub const REMOTE: (&str, u16) = ("fd00:244:2::2", 8080);
pub const LOCAL: (&str, u16) = ("fd00:244:1::2", 8080);
pub const LB_IP: &str = "fd00:50::10";
pub const LOCAL_LB_IP: &str = "fd00:50::11";
pub const EXTERNAL_IP: &str = "fd00:60::10";
pub const CLUSTER_IP: (&str, u16) = ("fd00:96::10", 80);
pub const CLIENT: (&str, u16) = ("2001:db8:7::7", 40000);

/// `web`: NodePort 31000 and an LB IP, externalTrafficPolicy Cluster, its
/// one endpoint on another node. `local`: an LB IP with policy Local and no
/// endpoint here. `ranged`: an LB IP open to one /64 only, its endpoint
/// on this node. Each is dual-stack, so IPv4 frontends exist beside.
pub const MANIFESTS: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  type: LoadBalancer
  clusterIPs: ["fd00:96::10", "10.96.0.10"]
  ipFamilies: [IPv6, IPv4]
  ipFamilyPolicy: RequireDualStack
  externalIPs: ["fd00:60::10"]
  ports:
    - {name: http, port: 80, targetPort: 8080, nodePort: 31000}
    - {name: dns, port: 53, targetPort: 8080, nodePort: 31053, protocol: UDP}
status:
  loadBalancer:
    ingress: [{ip: "fd00:50::10"}, {ip: "192.168.50.10"}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-v6
  namespace: default
  labels: {kubernetes.io/service-name: web}
addressType: IPv6
ports:
  - {name: http, port: 8080}
  - {name: dns, port: 8080, protocol: UDP}
endpoints:
  - addresses: ["fd00:244:2::2"]
    nodeName: node2
---
apiVersion: v1
kind: Service
metadata: {name: local, namespace: default}
spec:
  type: LoadBalancer
  clusterIPs: ["fd00:96::11"]
  ipFamilies: [IPv6]
  externalTrafficPolicy: Local
  healthCheckNodePort: 32000
  ports:
    - {name: http, port: 80, targetPort: 8080, nodePort: 31001}
status:
  loadBalancer:
    ingress: [{ip: "fd00:50::11"}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: local-v6
  namespace: default
  labels: {kubernetes.io/service-name: local}
addressType: IPv6
ports:
  - {name: http, port: 8080}
endpoints:
  - addresses: ["fd00:244:2::3"]
    nodeName: node2
---
apiVersion: v1
kind: Service
metadata: {name: ranged, namespace: default}
spec:
  type: LoadBalancer
  clusterIPs: ["fd00:96::12"]
  ipFamilies: [IPv6]
  loadBalancerSourceRanges: ["2001:db8:7::/64", "10.0.0.0/8"]
  ports:
    - {name: http, port: 80, targetPort: 8080, nodePort: 31002}
status:
  loadBalancer:
    ingress: [{ip: "fd00:50::12"}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: ranged-v6
  namespace: default
  labels: {kubernetes.io/service-name: ranged}
addressType: IPv6
ports:
  - {name: http, port: 8080}
endpoints:
  - addresses: ["fd00:244:1::2"]
    nodeName: node1
"#;

/// node1, with `NODE` as its IPv6 NodePort address and SNAT address.
pub fn node() -> Datapath {
    let opts = ModelOptions {
        nodeport_addresses: vec![NODE_V4.parse().unwrap()],
        node_addresses: vec![NODE_V4.parse().unwrap()],
        nodeport_addresses_v6: vec![addr(NODE)],
        node_addresses_v6: vec![addr(NODE)],
        ..ModelOptions::default()
    };
    super::synced_with_snat_v6(MANIFESTS, &opts)
}
