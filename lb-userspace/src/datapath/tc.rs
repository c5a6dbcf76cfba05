//! The tc programs: `lb_pod` translates at ingress of pod interfaces,
//! `lb_ext` delivers at ingress of external interfaces what XDP translated
//! but could not send itself, and `lb_tc` translates at ingress of external
//! interfaces that run no XDP. On kernels with tcx (6.6+) each attachment is
//! a bpf_link that can be pinned and atomically replaced; older kernels get
//! a cls_bpf filter under the clsact qdisc, at a fixed priority and handle
//! so a restarted agent replaces its own filter instead of adding a second.
use std::path::Path;

use anyhow::{Context, Result};
use aya::programs::{
    links::{FdLink, PinnedLink},
    tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle},
    LinkOrder, SchedClassifier, TcAttachType,
};

use super::Datapath;

/// Translation at ingress of pod interfaces.
pub const POD_PROGRAM: &str = "lb_pod";
/// Delivery of XDP's translated frames at ingress of external interfaces.
pub const EXT_PROGRAM: &str = "lb_ext";
/// Translation at ingress of external interfaces without XDP.
pub const EXT_TC_PROGRAM: &str = "lb_tc";
pub const PROGRAMS: [&str; 3] = [POD_PROGRAM, EXT_PROGRAM, EXT_TC_PROGRAM];

/// cls_bpf priority and handle of our filters on kernels without tcx.
const NL_PRIORITY: u16 = 0x2a;
const NL_HANDLE: u16 = 0x2a;

pub(super) fn load(ebpf: &mut aya::Ebpf) -> Result<()> {
    for name in PROGRAMS {
        let prog: &mut SchedClassifier = ebpf
            .program_mut(name)
            .with_context(|| format!("program {name} missing from the object"))?
            .try_into()?;
        prog.load()
            .with_context(|| format!("verifier rejected {name}"))?;
    }
    Ok(())
}

fn program<'a>(dp: &'a mut Datapath, name: &str) -> Result<&'a mut SchedClassifier> {
    Ok(dp
        .ebpf
        .program_mut(name)
        .with_context(|| format!("no program {name}"))?
        .try_into()?)
}

/// How a tc program ended up attached.
#[derive(Debug, PartialEq, Eq)]
pub enum TcAttached {
    /// A tcx link, pinned at the given path if one was asked for.
    Link,
    /// A tcx link pinned by an earlier run, now running the new program.
    Replaced,
    /// A cls_bpf filter (kernel without tcx), which outlives this process.
    Filter,
}

/// Attaches `program` at ingress of `ifname` in the calling thread's network
/// namespace. With `pin`, the tcx link is pinned there, and one pinned by an
/// earlier run is updated in place; without, it lives as long as `dp`.
pub fn attach_tc(
    dp: &mut Datapath,
    ifname: &str,
    program_name: &str,
    pin: Option<&Path>,
) -> Result<TcAttached> {
    let prog = program(dp, program_name)?;
    if let Some(pin) = pin {
        if let Ok(pinned) = PinnedLink::from_pin(pin) {
            let replaced = SchedClassifierLink::try_from(FdLink::from(pinned))
                .map_err(anyhow::Error::from)
                .and_then(|link| Ok(prog.attach_to_link(link)?));
            match replaced {
                Ok(_) => return Ok(TcAttached::Replaced),
                Err(e) => {
                    tracing::warn!(%ifname, "pinned tc link unusable ({e:#}); attaching anew");
                    let _ = std::fs::remove_file(pin);
                }
            }
        }
    }
    let tcx = prog.attach_with_options(
        ifname,
        TcAttachType::Ingress,
        TcAttachOptions::TcxOrder(LinkOrder::default()),
    );
    match tcx {
        Ok(id) => {
            if let Some(pin) = pin {
                let link = FdLink::try_from(prog.take_link(id)?)
                    .context("tcx attachment without a bpf_link")?;
                std::fs::create_dir_all(pin.parent().expect("pin in a directory"))?;
                link.pin(pin)
                    .with_context(|| format!("pinning the tc link of {ifname}"))?;
            }
            Ok(TcAttached::Link)
        }
        Err(e) => {
            tracing::info!(%ifname, "tcx unavailable ({e}); attaching a cls_bpf filter");
            attach_filter(prog, ifname)?;
            Ok(TcAttached::Filter)
        }
    }
}

/// Adds or replaces our cls_bpf filter; the returned link is forgotten so
/// the filter stays after this process (the kernel keeps filters anyway).
fn attach_filter(prog: &mut SchedClassifier, ifname: &str) -> Result<()> {
    if let Err(e) = tc::qdisc_add_clsact(ifname) {
        // Present already: ours from an earlier run, or another tool's.
        let exists = matches!(&e, tc::TcError::AlreadyAttached)
            || matches!(&e, tc::TcError::NetlinkError(n) if n.raw_os_error() == Some(libc::EEXIST));
        if !exists {
            return Err(e).with_context(|| format!("adding clsact to {ifname}"));
        }
    }
    let existing = SchedClassifierLink::attached(
        ifname,
        TcAttachType::Ingress,
        NL_PRIORITY,
        TcHandle::new(0, NL_HANDLE),
        None,
    )?;
    let id = match prog.attach_to_link(existing) {
        Ok(id) => id,
        Err(_) => prog
            .attach_with_options(
                ifname,
                TcAttachType::Ingress,
                TcAttachOptions::Netlink(NlOptions {
                    priority: NL_PRIORITY,
                    handle: TcHandle::new(0, NL_HANDLE),
                    classid: None,
                }),
            )
            .with_context(|| format!("attaching a cls_bpf filter to {ifname}"))?,
    };
    std::mem::forget(prog.take_link(id)?);
    Ok(())
}

/// Removes our cls_bpf filters (kernels without tcx) from `ifname`; tcx links
/// go with their pins.
pub fn detach_filters(ifname: &str) {
    for name in PROGRAMS {
        // Most interfaces have none: not finding one is the usual answer.
        if tc::qdisc_detach_program(ifname, TcAttachType::Ingress, name).is_ok() {
            tracing::info!(%ifname, program = name, "removed tc filter");
        }
    }
}
