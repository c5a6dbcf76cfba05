//! The LAN side of a node's uplink made to take XDP frames, as a NIC does
//! (`NodeProfile::uplinks_take_xdp`).
use std::path::Path;

use anyhow::{Context, Result};

/// Attaches an XDP_PASS program to `ifname` of network namespace `ns` and
/// pins its link at `pin`; it goes with the interface.
pub fn attach(ns: &str, ifname: &str, pin: &Path) -> Result<()> {
    super::cluster::in_netns(ns, || testbed::xdp_pass::attach(ifname)?.pin(pin))?
        .with_context(|| format!("attaching an XDP program to {ifname} in {ns}"))
}
