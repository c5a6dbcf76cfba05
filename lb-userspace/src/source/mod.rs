//! Where the Kubernetes objects the model consumes come from.

pub mod kube;
pub mod manifests;
pub mod node_leases;
