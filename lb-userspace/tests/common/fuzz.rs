//! The packet fuzzers' harness, shared by the IPv4 and IPv6 campaigns: the
//! hooks a frame runs through, the outcomes a check accepts, and the tally
//! of outcomes and failures. Each campaign brings its own seeds, mutations
//! and oracle.
use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Debug,
    ops::Range,
    time::Instant,
};

use etherparse::checksum::Sum16BitWords;
use lb_common::{IfaceInfo, FWD_NEIGH, FWD_PEER, FWD_REDIRECT, IFACE_POD, IFACE_REDIRECT};
use lb_userspace::{
    datapath::{
        run_frame, run_frame_with_full_meta, Datapath, FrameResult, EXT_PROGRAM, EXT_TC_PROGRAM,
        POD_PROGRAM, PROGRAM,
    },
    sync::NodeMaps,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use testbed::fuzz_knob;

use super::{packets::split_meta, uplink::small_mtu_node};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const XDP_REDIRECT: u32 = 4;
const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Hook {
    Xdp,
    /// `lb` behind as much metadata as the kernel takes, so no room is left
    /// for its own (as on a driver without XDP metadata): what it meant
    /// for tc, the kernel routes. Where the headroom, not the metadata
    /// limit, ran out (this 6.18 kernel), an answer cannot grow the frame
    /// either, and is dropped.
    XdpNoMetaRoom,
    Pod,
    Ext,
    /// `lb_tc`: the path at tc on an external interface without XDP.
    Tc,
}

impl Hook {
    fn is_xdp(self) -> bool {
        matches!(self, Hook::Xdp | Hook::XdpNoMetaRoom)
    }

    /// Runs `frame` through this hook's program once; the output of
    /// `XdpNoMetaRoom` starts after the metadata it was given.
    fn run(self, dp: &Datapath, frame: &[u8]) -> anyhow::Result<FrameResult> {
        match self {
            Hook::Xdp => run_frame(dp.program(PROGRAM)?, frame, 1),
            Hook::XdpNoMetaRoom => {
                run_frame_with_full_meta(dp.program(PROGRAM)?, frame).map(|(r, meta)| FrameResult {
                    frame: r.frame[meta..].to_vec(),
                    ..r
                })
            }
            Hook::Pod => run_frame(dp.classifier(POD_PROGRAM)?, frame, 1),
            Hook::Ext => run_frame(dp.classifier(EXT_PROGRAM)?, frame, 1),
            Hook::Tc => run_frame(dp.classifier(EXT_TC_PROGRAM)?, frame, 1),
        }
    }
}

/// What a program did with a frame, of the outcomes a check accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    Untouched,
    Dropped,
    Translated,
    Answered,
}

pub type Failure = (&'static str, String);
pub type Checked = Result<(), Failure>;

/// A family's checks of what the programs made of a frame of its own.
pub struct Oracle {
    /// The family's EtherType and its frames' shortest length, the fixed
    /// header's end. Other frames must pass untouched; shorter ones of the
    /// family run through XDP only, as BPF_PROG_TEST_RUN builds no skb of
    /// them.
    pub ethertype: [u8; 2],
    pub min_len: usize,
    /// The output is an answer the program built (TCP RST, ICMP error)
    /// rather than the input translated.
    pub is_answer: fn(&[u8], &[u8]) -> bool,
    pub check_answer: fn(&[u8], &[u8]) -> Checked,
    /// Checks a translation; `sent`: the program routed it itself.
    pub check_translation: fn(&[u8], &[u8], bool) -> Checked,
}

impl Oracle {
    fn is_family(&self, frame: &[u8]) -> bool {
        frame[12..14] == self.ethertype
    }

    fn ours(&self, frame: &[u8]) -> bool {
        self.is_family(frame) && frame.len() >= self.min_len
    }

    /// Runs `frame` through every hook that can take it and records each
    /// outcome.
    fn run_all(&self, dp: &Datapath, f: &mut Tally, at: &str, frame: &[u8]) {
        let skb = self.ours(frame) || !self.is_family(frame);
        let hooks = if skb { &HOOKS[..] } else { &HOOKS[..2] };
        run_all(dp, f, at, frame, hooks, |h, i, a, r| self.check(h, i, a, r));
    }

    /// The properties every outcome must have: a known verdict, metadata
    /// only as XDP's note to tc, other frames passed untouched, and a
    /// whole answer or a clean translation.
    fn check(&self, hook: Hook, input: &[u8], action: u32, raw: &[u8]) -> Result<Outcome, Failure> {
        let (meta, out) = match hook {
            Hook::Xdp => split_meta(raw),
            _ => (None, raw),
        };
        let (pass, drop, sent) = if hook.is_xdp() {
            (
                XDP_PASS,
                XDP_DROP,
                [XDP_TX, XDP_REDIRECT].contains(&action) || meta.is_some(),
            )
        } else {
            (TC_ACT_OK, TC_ACT_SHOT, action == TC_ACT_REDIRECT)
        };
        if !(action == pass || action == drop || sent) {
            return Err(("unknown verdict", format!("{action}")));
        }
        if let Some((kind, ifindex)) = meta {
            if action != XDP_PASS
                || ![FWD_REDIRECT, FWD_PEER, FWD_NEIGH].contains(&kind)
                || ifindex == 0
            {
                return Err(("bad metadata", format!("kind {kind} ifindex {ifindex}")));
            }
        }
        // Test-run skbs carry no metadata, so lb_ext only ever sees frames
        // that are not XDP's.
        if hook == Hook::Ext || !self.ours(input) {
            if action != pass || out != input {
                return Err(("not passed untouched", String::new()));
            }
            return Ok(Outcome::Untouched);
        }
        if action == drop {
            return Ok(Outcome::Dropped);
        }
        if out == input && !sent {
            return Ok(Outcome::Untouched);
        }
        if (self.is_answer)(input, out) {
            (self.check_answer)(input, out).map(|_| Outcome::Answered)
        } else {
            (self.check_translation)(input, out, sent).map(|_| Outcome::Translated)
        }
    }
}

/// The checks of a translation both families share: the TTL (hop limit)
/// byte at `ttl_at` lost one exactly when the program routed the packet
/// itself (`sent`), as the kernel's forwarding takes one when it routes
/// it; no byte outside `owned` changed; and the translation broke nothing
/// that was whole (`broke`: the defects the output has and the input had
/// not).
pub fn check_rewrite<D: Debug>(
    input: &[u8],
    out: &[u8],
    sent: bool,
    ttl_at: usize,
    mut owned: Vec<Range<usize>>,
    broke: BTreeSet<D>,
) -> Checked {
    let ttl = if sent {
        input[ttl_at].wrapping_sub(1)
    } else {
        input[ttl_at]
    };
    if out[ttl_at] != ttl {
        return Err((
            "wrong TTL or hop limit",
            format!("{} -> {} (sent on: {sent})", input[ttl_at], out[ttl_at]),
        ));
    }
    owned.push(ttl_at..ttl_at + 1);
    if let Some(i) =
        (0..input.len()).find(|&i| input[i] != out[i] && !owned.iter().any(|r| r.contains(&i)))
    {
        return Err((
            "wrote outside the translated fields",
            format!("offset {i}: {:#04x} -> {:#04x}", input[i], out[i]),
        ));
    }
    if !broke.is_empty() {
        return Err(("half-rewritten", format!("the translation broke {broke:?}")));
    }
    Ok(())
}

/// Whether the checksum field `check` holds the folded sum of `pseudo`, as
/// a partial checksum (checksum offload) does. The program tells one from
/// a complete checksum by that value alone (`nat.rs`): a complete checksum
/// that happens to equal it (1 in 65,536) is updated as a partial one, by
/// design.
pub fn holds_pseudo_sum(check: &[u8], pseudo: &[u8]) -> bool {
    let folded = !Sum16BitWords::new().add_slice(pseudo).ones_complement();
    let check = u16::from_ne_bytes([check[0], check[1]]);
    // 0 and 0xffff are the same number in ones' complement.
    check == folded || (check | folded == 0xffff && (check == 0 || folded == 0))
}

/// A mutation any frame takes: a bit flipped or a byte set (`interesting`
/// ones half the time), mostly in its first `headers` bytes, where parsing
/// happens; the frame cut short; a trailer added.
pub fn mutate_bytes(rng: &mut ChaCha8Rng, f: &mut Vec<u8>, headers: usize, interesting: &[u8]) {
    let at = if rng.random_ratio(4, 5) {
        rng.random_range(0..f.len().min(headers))
    } else {
        rng.random_range(0..f.len())
    };
    match rng.random_range(0..4) {
        0 => f[at] ^= 1 << rng.random_range(0..8),
        1 => {
            f[at] = if rng.random() {
                interesting[rng.random_range(0..interesting.len())]
            } else {
                rng.random()
            }
        }
        2 => {
            let len = rng.random_range(14..=f.len());
            f.truncate(len);
        }
        _ => {
            let trailer = rng.random_range(1..=64);
            f.extend((0..trailer).map(|_| rng.random::<u8>()));
        }
    }
}

/// What a family's campaign brings to `campaign`.
pub struct Family<'a> {
    /// "IPv4" or "IPv6", for the report.
    pub name: &'a str,
    pub default_iters: u64,
    pub default_seed: u64,
    /// A next hop behind `small_mtu_node`'s `up0` with a neighbour entry,
    /// and routes (prefix, next hop) the campaign's addresses need.
    pub resolved: &'a str,
    pub routes: &'a [(&'a str, &'a str)],
    /// The provisioned data plane.
    pub data_plane: fn() -> Datapath,
    /// Valid frames of each kind, made with the data plane (flows set up).
    pub seeds: fn(&Datapath) -> Vec<Vec<u8>>,
    /// Makes a frame cut short say so in its length field (and checksum),
    /// where it has one.
    pub follow_cut: fn(&mut [u8]) -> bool,
    pub mutate: fn(&mut ChaCha8Rng, &mut Vec<u8>),
    pub oracle: Oracle,
}

/// Runs `family`'s campaign in a namespace of its own and panics with the
/// failures, grouped. `XDPLB_FUZZ_ITERS` and `XDPLB_FUZZ_SEED` replace the
/// CI budget and seed (`cargo xtask fuzz --soak`).
pub fn campaign(family: &Family) {
    let iters = fuzz_knob("XDPLB_FUZZ_ITERS", family.default_iters);
    let seed = fuzz_knob("XDPLB_FUZZ_SEED", family.default_seed);
    let (tb, node) = small_mtu_node();
    let neighbour = [
        "neigh",
        "replace",
        family.resolved,
        "lladdr",
        "02:00:00:00:00:22",
        "dev",
        "up0",
        "nud",
        "permanent",
    ];
    let routes = family
        .routes
        .iter()
        .map(|&(prefix, via)| vec!["route", "add", prefix, "via", via]);
    for args in std::iter::once(neighbour.to_vec()).chain(routes) {
        let out = tb.exec(&node, "ip", &args).unwrap();
        assert!(out.status.success(), "ip {args:?}: {out:?}");
    }
    let up0 = tb.ifindex(&node, "up0").unwrap();
    let report = tb
        .in_ns(&node, || run_campaign(family, seed, iters, up0))
        .unwrap();
    if !report.is_empty() {
        panic!("{report}");
    }
}

fn run_campaign(family: &Family, seed: u64, iters: u64, up0: u32) -> String {
    let mut dp = (family.data_plane)();
    let seeds = (family.seeds)(&dp);
    let mut f = Tally::default();
    let start = Instant::now();
    let setup_verdicts = verdicts(&dp);

    // Every truncation of every seed, raw and with its length field
    // following the cut, and each seed with an Ethernet trailer.
    let mut sweep = 0u64;
    for (n, s) in seeds.iter().enumerate() {
        let mut padded = s.clone();
        padded.extend_from_slice(&[0xa5; 18]);
        let mut frames = vec![(format!("seed frame {n} padded"), padded)];
        for len in 14..s.len() {
            let mut cut = s[..len].to_vec();
            frames.push((format!("seed frame {n} cut to {len}"), cut.clone()));
            if (family.follow_cut)(&mut cut) {
                frames.push((format!("seed frame {n} cut to {len}, length too"), cut));
            }
        }
        for (at, frame) in frames {
            family.oracle.run_all(&dp, &mut f, &at, &frame);
            sweep += 1;
        }
    }
    let swept = start.elapsed();

    for i in 0..iters {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(i);
        if i % 256 == 0 {
            vary_interfaces(&mut dp, &mut rng, up0);
        }
        let mut frame = seeds[rng.random_range(0..seeds.len())].clone();
        // Unmutated seeds now and then keep their flows alive and take the
        // flow cache path.
        if rng.random_ratio(9, 10) {
            (family.mutate)(&mut rng, &mut frame);
        }
        let at = format!("seed {seed:#x} iteration {i}");
        family.oracle.run_all(&dp, &mut f, &at, &frame);
    }
    eprintln!(
        "{} packet fuzz: {} seed frames, {sweep} cut or padded in {swept:.1?}, {iters} fuzzed \
         (seed {seed:#x}) in {:.1?}\n  outcomes: {:?}\n  reasons: {:?}",
        family.name,
        seeds.len(),
        start.elapsed() - swept,
        f.outcomes,
        dp.maps
            .reason_totals()
            .unwrap()
            .into_iter()
            .filter(|&(_, n)| n != 0)
            .map(|(r, n)| (r.name(), n))
            .collect::<Vec<_>>(),
    );
    // Every frame a deciding program ran on counted exactly one verdict.
    let counted = verdicts(&dp) - setup_verdicts;
    if counted != f.runs {
        f.fail(
            "verdicts".into(),
            format!("{} program runs counted {counted} verdicts", f.runs),
        );
    }
    f.report(&[Hook::Xdp, Hook::Pod, Hook::Tc])
}

/// Every hook, XDP's first.
const HOOKS: [Hook; 5] = [
    Hook::Xdp,
    Hook::XdpNoMetaRoom,
    Hook::Pod,
    Hook::Ext,
    Hook::Tc,
];

/// The XDP translation of `frame`, run once so that its flow exists.
pub fn translated(dp: &Datapath, frame: &[u8]) -> Vec<u8> {
    let r = Hook::Xdp.run(dp, frame).unwrap();
    split_meta(&r.frame).1.to_vec()
}

/// Runs `frame` through each of `hooks` and records what `check` (hook,
/// input, verdict, output) makes of each outcome.
fn run_all(
    dp: &Datapath,
    f: &mut Tally,
    at: &str,
    frame: &[u8],
    hooks: &[Hook],
    check: impl Fn(Hook, &[u8], u32, &[u8]) -> Result<Outcome, Failure>,
) {
    for &hook in hooks {
        let (action, out, checked) = match hook.run(dp, frame) {
            Ok(r) => {
                // lb_ext only delivers what XDP decided, under XDP's verdict.
                if hook != Hook::Ext {
                    f.runs += 1;
                }
                let checked = check(hook, frame, r.action, &r.frame);
                (r.action, r.frame, checked)
            }
            Err(e) => (
                u32::MAX,
                Vec::new(),
                Err(("test run failed", format!("{e:#}"))),
            ),
        };
        match checked {
            Ok(outcome) => *f.outcomes.entry((hook, outcome)).or_default() += 1,
            Err((kind, detail)) => f.fail(
                format!("{hook:?}: {kind}"),
                format!(
                    "{hook:?}: {kind}: {detail}\n  at {at}\n  input ({} bytes): {}\n  \
                     output (verdict {action}, {} bytes): {}",
                    frame.len(),
                    hex(frame),
                    out.len(),
                    hex(&out),
                ),
            ),
        }
    }
}

/// Every verdict the programs counted so far.
fn verdicts(dp: &Datapath) -> u64 {
    dp.maps
        .reason_totals()
        .unwrap()
        .into_iter()
        .filter(|(r, _)| r.kind() == lb_common::stats::Kind::Verdict)
        .map(|(_, n)| n)
        .sum()
}

/// Which of its interfaces the agent registered, and how: decides between
/// XDP_TX and tc for answers, and between XDP_REDIRECT, peer, neighbour and
/// kernel delivery for translated packets (on flows whose decision is
/// refreshed).
fn vary_interfaces(dp: &mut Datapath, rng: &mut ChaCha8Rng, up0: u32) {
    for (ifindex, choices) in [
        (1, &[Some(IFACE_REDIRECT), None][..]),
        (up0, &[Some(IFACE_REDIRECT), Some(IFACE_POD), None][..]),
    ] {
        match choices[rng.random_range(0..choices.len())] {
            Some(flags) => dp.maps.put_iface(ifindex, IfaceInfo { flags }).unwrap(),
            None => {
                let _ = dp.maps.ifaces_mut().remove(&ifindex);
            }
        }
    }
}

/// A checksummed region (checksum field included) is valid when its
/// ones'-complement sum is all ones, whose complement is zero.
pub fn sums_to_zero(parts: &[&[u8]]) -> bool {
    parts
        .iter()
        .fold(Sum16BitWords::new(), |s, p| s.add_slice(p))
        .ones_complement()
        == 0
}

pub fn set_u16(f: &mut [u8], at: usize, v: u16) {
    f[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

/// Writes the checksum that makes `parts` (with the field zeroed) valid.
pub fn set_checksum(f: &mut [u8], field: usize, parts: impl Fn(&[u8]) -> Sum16BitWords) {
    f[field..field + 2].fill(0);
    let sum = parts(f).ones_complement();
    f[field..field + 2].copy_from_slice(&sum.to_ne_bytes());
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Outcomes per program, and failures grouped by kind: the count and the
/// first report of each, so one bug hit a thousand times does not hide
/// another.
#[derive(Default)]
struct Tally {
    outcomes: BTreeMap<(Hook, Outcome), u64>,
    failures: BTreeMap<String, (u64, String)>,
    /// Frames the deciding programs (all but `lb_ext`) ran on.
    runs: u64,
}

impl Tally {
    fn fail(&mut self, kind: String, report: String) {
        self.failures.entry(kind).or_insert((0, report)).0 += 1;
    }

    /// The failures, and any outcome the packet path at one of `hooks`
    /// never reached: a campaign that never translates checks nothing.
    fn report(&self, hooks: &[Hook]) -> String {
        let mut out: String = self
            .failures
            .values()
            .map(|(n, first)| format!("{n} time(s), first:\n{first}\n"))
            .collect();
        for &hook in hooks {
            for outcome in [
                Outcome::Untouched,
                Outcome::Dropped,
                Outcome::Translated,
                Outcome::Answered,
            ] {
                if !self.outcomes.contains_key(&(hook, outcome)) {
                    out += &format!("{hook:?} never had outcome {outcome:?}\n");
                }
            }
        }
        out
    }
}
