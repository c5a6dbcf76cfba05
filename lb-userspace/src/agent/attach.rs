//! Attaching the programs to interfaces: on external interfaces XDP (`lb`)
//! with tc (`lb_ext`) behind it, or tc alone (`lb_tc`) where XDP would not
//! pay (`uplink.rs`); tc (`lb_pod`) on pod interfaces. Each link is pinned
//! so the data plane keeps serving when the agent exits, and a restarted
//! agent swaps its new program into the existing link atomically instead of
//! detaching.
//!
//! The agent changes no sysctl: translated packets are redirected past the
//! host's input path (reverse-path filter, martian checks) rather than
//! handed to it, so nodes keep their distribution's settings.
use std::collections::BTreeSet;

use anyhow::{Context, Result};
use aya::programs::{
    links::{FdLink, PinnedLink},
    xdp::XdpLink,
};
use lb_common::{IfaceInfo, IFACE_POD, IFACE_REDIRECT};

use super::{
    pins::Layout,
    uplink::{self, Hook},
};
use crate::{
    datapath::{attach_tc, Datapath, XdpMode, EXT_PROGRAM, EXT_TC_PROGRAM, POD_PROGRAM, PROGRAM},
    sync::NodeMaps,
};

pub struct Attacher {
    mode: XdpMode,
    attached: BTreeSet<String>,
}

fn ifindex(ifname: &str) -> Option<u32> {
    let c = std::ffi::CString::new(ifname).ok()?;
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}

impl Attacher {
    pub fn new(mode: XdpMode) -> Self {
        Self {
            mode,
            attached: BTreeSet::new(),
        }
    }

    pub fn attached(&self) -> &BTreeSet<String> {
        &self.attached
    }

    /// `pod`: the interface faces pods (in-cluster traffic) rather than the outside.
    pub fn attach(
        &mut self,
        dp: &mut Datapath,
        pins: &Layout,
        ifname: &str,
        pod: bool,
    ) -> Result<()> {
        if self.attached.contains(ifname) {
            return Ok(());
        }
        pins.adopt_links(ifname)?;
        let mut flags = 0;
        let how = if pod {
            flags |= IFACE_POD;
            let how = attach_tc(dp, ifname, POD_PROGRAM, Some(&pins.tc_link(ifname)))?;
            // Agents before the tc pod path pinned an XDP link here; unpinned,
            // it detaches, and pod traffic is translated once, at tc.
            if std::fs::remove_file(pins.link(ifname)).is_ok() {
                tracing::info!(%ifname, "removed the XDP link of the older pod path");
            }
            format!("tc {how:?}")
        } else {
            let index = ifindex(ifname).with_context(|| format!("no interface {ifname}"))?;
            let (hook, why) = uplink::choose(ifname, index, self.mode);
            tracing::info!(%ifname, ?hook, "external interface: {why}");
            match hook {
                Hook::Xdp { redirect } => {
                    if redirect {
                        flags |= IFACE_REDIRECT;
                    }
                    // XDP first: `lb_tc`, if an earlier run left it, delivers
                    // what XDP translates until `lb_ext` replaces it.
                    let replaced = self.attach_xdp(dp, pins, ifname)?;
                    let how = attach_tc(dp, ifname, EXT_PROGRAM, Some(&pins.tc_link(ifname)))?;
                    format!("XDP replaced={replaced}, tc {how:?}")
                }
                Hook::Tc => {
                    // tc first, so no packet meets the interface without
                    // the path while an earlier run's XDP link goes.
                    let how = attach_tc(dp, ifname, EXT_TC_PROGRAM, Some(&pins.tc_link(ifname)))?;
                    if std::fs::remove_file(pins.link(ifname)).is_ok() {
                        tracing::info!(%ifname, "removed the XDP link an earlier run chose");
                    }
                    format!("tc {how:?}")
                }
            }
        };
        // Before any translated packet can be sent there: the path reads
        // the flags to choose how to deliver.
        if let Some(index) = ifindex(ifname) {
            dp.maps.put_iface(index, IfaceInfo { flags })?;
        }
        tracing::info!(%ifname, pod, %how, "programs attached");
        self.attached.insert(ifname.to_string());
        Ok(())
    }

    /// Attaches `lb` by a pinned link, updating one an earlier run pinned;
    /// returns whether it did that.
    fn attach_xdp(&self, dp: &mut Datapath, pins: &Layout, ifname: &str) -> Result<bool> {
        let pin = pins.link(ifname);
        std::fs::create_dir_all(pin.parent().expect("links dir"))?;
        let replaced = match PinnedLink::from_pin(&pin) {
            Ok(pinned) => {
                let link = XdpLink::try_from(FdLink::from(pinned))?;
                let prog = dp.program_mut(PROGRAM)?;
                // The pin keeps the link alive after this process closes its fd.
                match prog.attach_to_link(link) {
                    Ok(_) => true,
                    Err(e) => {
                        tracing::warn!(%ifname, "pinned link unusable ({e}); attaching anew");
                        let _ = std::fs::remove_file(&pin);
                        false
                    }
                }
            }
            Err(_) => false,
        };
        if !replaced {
            let id = dp.attach(ifname, self.mode)?;
            let link = dp.program_mut(PROGRAM)?.take_link(id)?;
            let fd_link = FdLink::try_from(link)
                .context("kernel attached XDP without a bpf_link; cannot pin it")?;
            // Dropping the returned handle closes our fd; the pin holds the link.
            fd_link
                .pin(&pin)
                .with_context(|| format!("pinning the link of {ifname}"))?;
        }
        Ok(replaced)
    }

    /// Forgets interfaces that disappeared (their links went with them).
    pub fn prune(&mut self, pins: &Layout, present: &BTreeSet<String>) {
        let gone: Vec<String> = self.attached.difference(present).cloned().collect();
        for ifname in gone {
            let _ = std::fs::remove_file(pins.link(&ifname));
            let _ = std::fs::remove_file(pins.tc_link(&ifname));
            tracing::info!(%ifname, "interface gone");
            self.attached.remove(&ifname);
        }
    }
}
