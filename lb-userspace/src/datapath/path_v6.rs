//! The IPv6 path's entry programs, which the IPv4 programs tail-call for
//! IPv6 packets so that the IPv6 path gets a stack of its own, and its
//! entries for fragments, which those tail-call in turn (and the IPv4
//! programs for ICMPv6). Loaded after the
//! rest: a kernel that refuses them still runs the IPv4 path, and IPv6
//! packets that may be a Service's then pass (`pass_ipv6_path_missing`).
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

/// The IPv6 entries: XDP, tc on pod interfaces, tc on external ones.
const PATH: [&str; 3] = ["lb6", "lb6_pod", "lb6_tc"];
/// The same for IPv6 fragments.
const FRAGMENT_PATH: [&str; 3] = ["lb6_frag", "lb6_frag_pod", "lb6_frag_tc"];

/// The program arrays' handles: they keep the slots filled.
pub struct Slots {
    _path: [ProgramArray<MapData>; 2],
    _fragments: Option<[ProgramArray<MapData>; 2]>,
}

pub(super) fn load(ebpf: &mut Ebpf) -> Result<Slots> {
    let path = entries(ebpf, PATH, [names::PATH_V6_XDP, names::PATH_V6_TC])?;
    // Fragments and ICMPv6 errors are an addition: without their entries
    // they pass.
    let fragments = entries(
        ebpf,
        FRAGMENT_PATH,
        [names::PATH_V6_FRAG_XDP, names::PATH_V6_FRAG_TC],
    )
    .inspect_err(|e| tracing::warn!("IPv6 fragments and ICMPv6 errors pass untranslated: {e:#}"))
    .ok();
    Ok(Slots {
        _path: path,
        _fragments: fragments,
    })
}

/// Loads the entries `[xdp, pod, ext]` and puts them in the program
/// arrays `[xdp, tc]`.
fn entries(
    ebpf: &mut Ebpf,
    [xdp, pod, ext]: [&str; 3],
    [xdp_array, tc_array]: [&str; 2],
) -> Result<[ProgramArray<MapData>; 2]> {
    let prog: &mut Xdp = program(ebpf, xdp)?.try_into()?;
    prog.load()
        .with_context(|| format!("verifier rejected {xdp}"))?;
    for name in [pod, ext] {
        let tc: &mut SchedClassifier = program(ebpf, name)?.try_into()?;
        tc.load()
            .with_context(|| format!("verifier rejected {name}"))?;
    }
    let mut xdp_slots = prog_array(ebpf, xdp_array)?;
    xdp_slots.set(0, fd(ebpf, xdp)?, 0)?;
    let mut tc_slots = prog_array(ebpf, tc_array)?;
    tc_slots.set(V6_POD, fd(ebpf, pod)?, 0)?;
    tc_slots.set(V6_EXT, fd(ebpf, ext)?, 0)?;
    Ok([xdp_slots, tc_slots])
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
