//! Where the Kubernetes objects the model consumes come from.

pub mod kube;
pub mod manifests;
