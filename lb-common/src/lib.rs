//! Map keys, values and pure helpers shared by the XDP program and the agent.
//!
//! Every type stored in a map is `#[repr(C)]`, `Copy`, has explicit padding
//! fields and a const size assert, so both sides agree byte for byte and
//! `bpftool map dump` shows the same field names the code uses.
//!
//! IPv6 gets its own `*_V6` maps with 16-byte addresses later (as Cilium's
//! lb4/lb6 split); the IPv4 layouts here never need to change for it.
#![cfg_attr(not(test), no_std)]

pub mod addr;
pub mod checksum;
pub mod conntrack;
pub mod decide;
pub mod filter;
pub mod flow;
#[cfg(test)]
mod layout;
pub mod maps;
pub mod meta;
pub mod monitor;
pub mod snat;
pub mod sock;
pub mod stats;
pub mod svc_name;

pub use maps::*;
pub use stats::Reason;
pub use svc_name::{SvcName, SvcNameParts};
