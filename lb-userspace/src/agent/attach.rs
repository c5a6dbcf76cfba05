//! Attaching the program to interfaces, with each link pinned so the data
//! plane keeps serving when the agent exits, and a restarted agent swaps its
//! new program into the existing link atomically instead of detaching.
use std::collections::BTreeSet;

use anyhow::{Context, Result};
use aya::programs::{
    links::{FdLink, PinnedLink},
    xdp::XdpLink,
};
use lb_common::{IfaceInfo, IFACE_POD, IFACE_REDIRECT};

use super::pins::Layout;
use crate::datapath::{Datapath, XdpMode, PROGRAM};

pub struct Attacher {
    mode: XdpMode,
    attached: BTreeSet<String>,
}

fn ifindex(ifname: &str) -> Option<u32> {
    let c = std::ffi::CString::new(ifname).ok()?;
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}

/// Packets this node translates and hands to its kernel (NodePort replies,
/// source-NATed requests) carry one of the node's own addresses as source;
/// Linux drops such packets as martians unless `accept_local` is set, and
/// drops VIP-sourced replies entering a pod's veth under strict reverse-path
/// filtering. Redirected frames skip both checks, kernel-routed ones do not.
fn prepare_sysctls(ifname: &str) {
    let conf = std::path::Path::new("/proc/sys/net/ipv4/conf");
    let read = |dev: &str, key: &str| {
        std::fs::read_to_string(conf.join(dev).join(key))
            .ok()
            .and_then(|v| v.trim().parse::<u8>().ok())
    };
    if let Err(e) = std::fs::write(conf.join(ifname).join("accept_local"), "1") {
        tracing::warn!(%ifname, "cannot set accept_local: {e}");
    }
    // The effective rp_filter is the larger of "all" and the device's: only
    // strict mode (1) breaks translated replies, loose mode (2) does not.
    if read("all", "rp_filter").max(read(ifname, "rp_filter")) == Some(1) {
        if let Err(e) = std::fs::write(conf.join(ifname).join("rp_filter"), "2") {
            tracing::warn!(%ifname, "cannot loosen rp_filter: {e}");
        }
    }
}

/// Physical devices take redirected XDP frames; virtual ones (veth, whose
/// peer may run no XDP program) get translated packets through the kernel.
fn takes_redirects(ifname: &str) -> bool {
    std::path::Path::new("/sys/class/net")
        .join(ifname)
        .join("device")
        .exists()
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
        if let Some(index) = ifindex(ifname) {
            let mut flags = if takes_redirects(ifname) {
                IFACE_REDIRECT
            } else {
                0
            };
            if pod {
                flags |= IFACE_POD;
            }
            dp.maps.ifaces.insert(index, IfaceInfo { flags }, 0)?;
        }
        prepare_sysctls(ifname);
        tracing::info!(%ifname, replaced, "program attached");
        self.attached.insert(ifname.to_string());
        Ok(())
    }

    /// Forgets interfaces that disappeared (their links went with them).
    pub fn prune(&mut self, pins: &Layout, present: &BTreeSet<String>) {
        let gone: Vec<String> = self.attached.difference(present).cloned().collect();
        for ifname in gone {
            let _ = std::fs::remove_file(pins.link(&ifname));
            tracing::info!(%ifname, "interface gone");
            self.attached.remove(&ifname);
        }
    }
}
