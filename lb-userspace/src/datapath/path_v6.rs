//! The IPv6 path's entry programs, which the IPv4 programs tail-call for
//! IPv6 packets so that the IPv6 path gets a stack of its own. Loaded
//! after the rest: a kernel that refuses them still runs the IPv4 path,
//! and IPv6 packets then pass (`pass_ipv6_path_missing`).
//!
//! The kernel empties a program array when its last user reference goes
//! (to break reference cycles through the programs it holds), so the
//! agent pins the arrays, which keeps the IPv6 path running across its
//! restarts, and `Slots` holds them while the `Datapath` lives. A restarted
//! agent fills the pinned arrays with its own programs.
use anyhow::{Context, Result};
use aya::{
    maps::{MapData, ProgramArray},
    programs::{SchedClassifier, Xdp},
    Ebpf,
};
use lb_common::{names, V6_EXT, V6_POD};

const XDP: &str = "lb6";
const POD: &str = "lb6_pod";
const EXT_TC: &str = "lb6_tc";

/// The program arrays' handles: they keep the slots filled.
pub struct Slots {
    _xdp: ProgramArray<MapData>,
    _tc: ProgramArray<MapData>,
}

pub(super) fn load(ebpf: &mut Ebpf) -> Result<Slots> {
    let xdp: &mut Xdp = program(ebpf, XDP)?.try_into()?;
    xdp.load()
        .with_context(|| format!("verifier rejected {XDP}"))?;
    for name in [POD, EXT_TC] {
        let tc: &mut SchedClassifier = program(ebpf, name)?.try_into()?;
        tc.load()
            .with_context(|| format!("verifier rejected {name}"))?;
    }
    let mut xdp_slots = prog_array(ebpf, names::PATH_V6_XDP)?;
    xdp_slots.set(0, fd(ebpf, XDP)?, 0)?;
    let mut tc_slots = prog_array(ebpf, names::PATH_V6_TC)?;
    tc_slots.set(V6_POD, fd(ebpf, POD)?, 0)?;
    tc_slots.set(V6_EXT, fd(ebpf, EXT_TC)?, 0)?;
    Ok(Slots {
        _xdp: xdp_slots,
        _tc: tc_slots,
    })
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut aya::programs::Program> {
    ebpf.program_mut(name)
        .with_context(|| format!("program {name} missing from the object"))
}

fn fd<'a>(ebpf: &'a Ebpf, name: &str) -> Result<&'a aya::programs::ProgramFd> {
    Ok(ebpf
        .program(name)
        .with_context(|| format!("program {name} missing from the object"))?
        .fd()?)
}

fn prog_array(ebpf: &mut Ebpf, name: &str) -> Result<ProgramArray<MapData>> {
    let map = ebpf
        .take_map(name)
        .with_context(|| format!("map {name} missing from the object"))?;
    Ok(ProgramArray::try_from(map)?)
}
