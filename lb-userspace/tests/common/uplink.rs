//! A node namespace whose route to the backends leaves through a device
//! with a small MTU, where BPF_PROG_TEST_RUN runs the programs (as if the
//! frame came in on the namespace's loopback device).
#![allow(dead_code)] // each test binary uses a different subset
use lb_userspace::datapath::{
    run_frame, run_frame_with_full_meta, Datapath, FrameResult, POD_PROGRAM, PROGRAM,
};
use testbed::netns::{Ns, Testbed};

/// The MTU of `up0`, the egress towards the backends.
pub const UPLINK_MTU: u32 = 1280;

/// `up0` (10.250.0.1/24 and fd00:250::1/64, MTU `UPLINK_MTU`) carries
/// 10.244.2.0/24 via 10.250.0.2 and fd00:244:2::/64 via fd00:250::2; the
/// namespace forwards both families.
pub fn small_mtu_node() -> (Testbed, Ns) {
    super::privileged("PMTU packet tests");
    let tb = Testbed::new().unwrap();
    let node = tb.add_ns("node").unwrap();
    // A veth pair inside the namespace: this kernel may have no dummy driver.
    let out = tb
        .exec(
            &node,
            "ip",
            &["link", "add", "up0", "type", "veth", "peer", "name", "up1"],
        )
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    tb.exec(
        &node,
        "ip",
        &["link", "set", "up0", "mtu", &UPLINK_MTU.to_string()],
    )
    .unwrap();
    tb.addr(&node, "up0", "10.250.0.1/24").unwrap();
    tb.up(&node, "up0").unwrap();
    tb.up(&node, "up1").unwrap();
    tb.up(&node, "lo").unwrap();
    tb.route(&node, "10.244.2.0/24 via 10.250.0.2 dev up0")
        .unwrap();
    // No duplicate address detection: a tentative address would hold the
    // route back for a second.
    let out = tb
        .exec(
            &node,
            "ip",
            &["addr", "add", "fd00:250::1/64", "dev", "up0", "nodad"],
        )
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    tb.route(&node, "fd00:244:2::/64 via fd00:250::2 dev up0")
        .unwrap();
    tb.sysctl(&node, "net.ipv4.ip_forward", "1").unwrap();
    tb.sysctl(&node, "net.ipv6.conf.all.forwarding", "1")
        .unwrap();
    (tb, node)
}

/// `frames` through `lb_pod` (tc) and then `lb` (XDP) of `dp`, in `node`'s
/// namespace: the tc results in order, then the XDP ones.
pub fn through_tc_and_xdp(
    tb: &Testbed,
    node: &Ns,
    dp: &Datapath,
    frames: [&[u8]; 2],
) -> [FrameResult; 4] {
    let tc = dp.classifier(POD_PROGRAM).unwrap();
    let xdp = dp.program(PROGRAM).unwrap();
    tb.in_ns(node, || {
        [
            run_frame(tc, frames[0], 1),
            run_frame(tc, frames[1], 1),
            run_frame(xdp, frames[0], 1),
            run_frame(xdp, frames[1], 1),
        ]
        .map(Result::unwrap)
    })
    .unwrap()
}

/// Runs `frame` through the XDP program in `node` with no room left for the
/// program's own metadata; returns the action and the frame after the
/// metadata it found.
pub fn through_xdp_without_meta_room(
    tb: &Testbed,
    node: &Ns,
    dp: &Datapath,
    frame: &[u8],
) -> (u32, Vec<u8>) {
    let xdp = dp.program(PROGRAM).unwrap();
    let (r, meta) = tb
        .in_ns(node, || run_frame_with_full_meta(xdp, frame).unwrap())
        .unwrap();
    (r.action, r.frame[meta..].to_vec())
}
