//! The IPv6 packet path, the steps `service` takes for IPv4: parse (the
//! extension headers walked with a bound), look up (the same address
//! filter, then `CT_V6`), select (`lb_common::decide` over `FRONTENDS_V6`
//! and `BACKENDS_V6`), rewrite (`nat::rewrite_v6`: no header checksum, the
//! pseudo-header in every transport checksum) and forward (the same FIB
//! and redirect code). Connection tracking and forwarding are the IPv4
//! code, generic over the family.
//!
//! ICMPv6 errors about translated flows are translated back (`icmp6`)
//! before the address filter, as ICMP ones are. Fragments follow the IPv4
//! rules (`frags`) on entries of their own (`FRAGMENTS`). Established
//! flows are served from the flow cache as IPv4 ones are; the entries for
//! fragments leave it alone, as first fragments go to `CT_V6`. The IPv4
//! entries translate established flows' packets themselves with this
//! path's functions (`established`), before their tail call to it.
//!
//! Unsafe in this module: header reads through pointers `parse::ptr_at`
//! checked, reads of connection-tracking entries through map pointers,
//! valid until the program returns, the flow key read only after
//! `transport` or `packet` wrote it, its words written and read as
//! 64-bit words in a `KeyRoom`, which aligns them, and `&mut`s to this
//! CPU's scratch
//! values, which nothing else uses while the program runs (programs on a
//! CPU run one at a time, none nested within this hook's).
use lb_common::{
    decide::{self, Client, Decision},
    CtKeyV6, CtValueV6, FlowCacheEntryV6, Reason, CT_DIR_FORWARD, CT_DIR_REPLY, PROTO_TCP,
    PROTO_UDP,
};

use crate::{
    conntrack::{self, FlowSums},
    flow_cache::{self, Cached},
    forward::{self, Fit, Size},
    frags,
    frame::Frame,
    icmp6,
    maps::{CONFIG_V6, CT_V6, SCRATCH_CT_V6, SCRATCH_NEW_V6},
    monitor, nat,
    parse::{self, FragmentV6, Ipv6Hdr, Upper, ETH_HLEN, IPV6_HLEN, L4},
    policy, reject, select,
    service::{counted, sides_v6, Verdict},
    stats,
};

/// A TCP or UDP packet whose headers are all inside the frame.
struct Packet<'k> {
    ip: *mut Ipv6Hdr,
    l4: L4,
    /// Bytes of transport header and payload.
    l4_len: u16,
    /// The whole packet's length; 0 for a GSO packet of BIG TCP, whose
    /// header leaves it to the MTU helper.
    len: u16,
    /// The flow's key, forward until a lookup turns it; in `path`'s
    /// frame, where `new_flow` and `answer` read it after
    /// `classify` returns.
    key: &'k mut CtKeyV6,
}

/// `FRAGMENTS`: the entry for rare packets (`maps::PATH_V6_FRAG_XDP`),
/// which takes packets whose first extension header is a Fragment header,
/// and ICMPv6 ones (the IPv4 entries hand them over): the path's own entry
/// then runs the path in its frame, one call and return less a packet.
#[inline(always)]
pub fn handle<C: Frame, const FRAGMENTS: bool>(ctx: &C) -> u32 {
    if !FRAGMENTS {
        return path::<C, false>(ctx);
    }
    // ICMPv6 ends here, whatever it is: were it to go on, the verifier
    // would walk the whole path once more for it.
    if let Some(ip) = parse::ptr_at::<Ipv6Hdr>(ctx, ETH_HLEN) {
        if unsafe { (*ip).next_hdr } == icmp6::IPPROTO_ICMPV6 {
            return counted(icmp6::translate_error(ctx, ip));
        }
    }
    fragment_path(ctx)
}

/// The path for fragments: a function of its own, so that its frame and
/// `icmp6::translate_error`'s are never on the stack together.
#[inline(never)]
fn fragment_path<C: Frame>(ctx: &C) -> u32 {
    path::<C, true>(ctx)
}

/// An established flow's packet, translated by the IPv4 entries before
/// their tail call to this path (`sides`: the address filter's answer
/// they have): the tail call, this path's second parse and second filter
/// test were a quarter of such a packet's cost. `None` leaves the packet
/// to the path, which looks it up again: packets with extension headers,
/// SYN, FIN and RST segments (whose state changes the path makes once),
/// the first packet of a flow, and packets to be answered instead. No
/// packet is half-handled here: the rewrite is the last step, and what a
/// packet left to the path has changed (its entry's clocks, the mark of a
/// flow's first reply, its cache slot) is what the path would change in
/// the same way.
#[inline(always)]
pub fn established<C: Frame>(ctx: &C, ip: *mut Ipv6Hdr, sides: (bool, bool)) -> Option<Verdict> {
    let proto = unsafe { (*ip).next_hdr };
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return None;
    }
    let off = ETH_HLEN + IPV6_HLEN;
    let l4 = parse::l4(ctx, proto, off)?;
    if !flow_cache::usable(l4.tcp_flags, false) {
        return None;
    }
    let mut key = KeyRoom(core::mem::MaybeUninit::uninit());
    let mut p = packet(ip, l4, off, proto, key.0.as_mut_ptr());
    let found = entry::<false>(&mut p, sides)?;
    let mut then = Then::default();
    let action = translate::<C, false>(ctx, &p, &found, &mut then);
    if then.answer != 0 {
        return None;
    }
    // No new flow's packet comes here: `new_flow` hands it to the path.
    Some((found.kind_reason(p.key), action))
}

/// Room for a packet's key on the stack, 8-byte aligned as the flow
/// cache's slots are (map values), so that `write_key` writes and
/// `flow_cache::same_v6` compares the key as five 64-bit words: as ten
/// 32-bit ones, the compare took twice the loads.
#[repr(C, align(8))]
struct KeyRoom(core::mem::MaybeUninit<CtKeyV6>);

/// Every IPv6 packet but ICMPv6.
#[inline(always)]
fn path<C: Frame, const FRAGMENTS: bool>(ctx: &C) -> u32 {
    let mut then = Then::default();
    // Not zeroed, which every packet would pay: `transport` writes it
    // whole before `classify` can leave `then` something to do.
    let mut key = KeyRoom(core::mem::MaybeUninit::uninit());
    let verdict = classify::<C, FRAGMENTS>(ctx, &mut then, key.0.as_mut_ptr());
    // Both finished here, where only the frame is left of the path: the
    // verifier then walks each once, not once per way into it.
    if then.new_flow {
        let key = unsafe { key.0.assume_init_ref() };
        return new_flow::<C, FRAGMENTS>(ctx, key, then.from_backend);
    }
    let action = counted(verdict);
    if then.answer != 0 {
        return answer(
            ctx,
            unsafe { key.0.assume_init_ref() },
            then.answer,
            then.mtu,
        );
    }
    action
}

/// What `classify` leaves to `path`.
#[derive(Default)]
struct Then {
    /// The ICMPv6 error type a translated packet is answered with instead
    /// (`reject::ICMP6_PACKET_TOO_BIG`, `ICMP6_TIME_EXCEEDED`); 0 for none.
    answer: u8,
    /// The egress MTU, for Packet Too Big.
    mtu: u32,
    /// The packet is the first of a flow to a frontend; its verdict is
    /// `new_flow`'s.
    new_flow: bool,
    /// The source of that packet may be a backend (its verdict when the
    /// destination turns out to be no frontend).
    from_backend: bool,
}

/// The verdict on the packet, unless it leaves `then` something to do.
#[inline(always)]
fn classify<C: Frame, const FRAGMENTS: bool>(
    ctx: &C,
    then: &mut Then,
    key: *mut CtKeyV6,
) -> Verdict {
    let Some(ip) = parse::ptr_at::<Ipv6Hdr>(ctx, ETH_HLEN) else {
        return (Reason::PassMalformed, C::PASS);
    };
    let (to_frontend, from_backend) = sides_v6(ip);
    if !to_frontend && !from_backend {
        return (Reason::PassNotOurs, C::PASS);
    }
    let mut p = match transport::<C, FRAGMENTS>(ctx, ip, key) {
        Ok(p) => p,
        Err(v) => return v,
    };
    match entry::<FRAGMENTS>(&mut p, (to_frontend, from_backend)) {
        // One place translates, whichever way the entry was found: each
        // copy of the rewrite and forwarding would multiply what the
        // verifier walks.
        Some(found) => (
            found.reason(p.key),
            translate::<C, FRAGMENTS>(ctx, &p, &found, then),
        ),
        None if to_frontend => {
            set_dir(p.key, CT_DIR_FORWARD);
            then.new_flow = true;
            then.from_backend = from_backend;
            (Reason::XlateNew, C::PASS)
        }
        None => (Reason::PassReplyNoFlow, C::PASS),
    }
}

/// Where the entry a packet is translated by lies.
struct Found {
    /// The flow cache slot of the packet's key, which holds the entry when
    /// `ct` is null.
    slot: *mut FlowCacheEntryV6,
    /// The entry in connection tracking; null when the slot holds a fresh
    /// copy.
    ct: *mut CtValueV6,
    /// The clock `ct` was looked up at, which its update uses too: a read
    /// is a helper call, a tenth of a packet through `CT_V6`. 0 with no
    /// `ct`.
    now: u64,
}

impl Found {
    /// The reason to count a packet translated by it under. Only an entry
    /// in connection tracking can be a new flow's (`first_of_new_flow`):
    /// the walk after `new_flow` misses the cache as the first walk did.
    #[inline(always)]
    fn reason(&self, key: &CtKeyV6) -> Reason {
        let reason = self.kind_reason(key);
        if self.ct.is_null() {
            reason
        } else {
            first_of_new_flow(reason)
        }
    }

    /// The reason of an established flow's packet, by where its entry
    /// lies and which way the packet goes.
    #[inline(always)]
    fn kind_reason(&self, key: &CtKeyV6) -> Reason {
        match (self.ct.is_null(), key.dir == CT_DIR_REPLY) {
            (false, false) => Reason::XlateEstablished,
            (false, true) => Reason::XlateReply,
            (true, false) => Reason::XlateEstablishedCached,
            (true, true) => Reason::XlateReplyCached,
        }
    }
}

/// The entry of the established flow the packet belongs to; `None` when
/// it belongs to none. `sides`: whether the destination may be a frontend
/// and the source a backend. Leaves the key in the direction of the entry.
#[inline(always)]
fn entry<const FRAGMENTS: bool>(
    p: &mut Packet,
    (to_frontend, from_backend): (bool, bool),
) -> Option<Found> {
    // A reply to a source-NATed flow comes to the node's address, a NodePort
    // address too, on any port (a flow keeps its client's port when it
    // can): it is looked up as a reply before it can become a new flow.
    if to_frontend && from_backend && is_snat_addr(p.key.dst_addr) {
        if let Some(found) = reply_entry::<FRAGMENTS>(p) {
            return Some(found);
        }
        set_dir(p.key, CT_DIR_FORWARD);
    }
    if to_frontend {
        if let Some(found) = lookup::<FRAGMENTS>(p) {
            return Some(found);
        }
    }
    if !from_backend {
        return None;
    }
    reply_entry::<FRAGMENTS>(p)
}

/// The entry of the key as it stands: this CPU's cached copy while it is
/// fresh, else connection tracking's.
#[inline(always)]
fn lookup<const FRAGMENTS: bool>(p: &Packet) -> Option<Found> {
    let key = &*p.key;
    // Never `None`: the hash is within the map.
    let slot = key.cache_slot()?;
    if flow_cache::usable(p.l4.tcp_flags, FRAGMENTS)
        && flow_cache::get(slot, key, flow_cache::jiffies()).is_some()
    {
        return Some(Found {
            slot,
            ct: core::ptr::null_mut(),
            now: 0,
        });
    }
    // The clock only now: a cached packet needs none.
    let now = conntrack::now();
    conntrack::lookup(key, p.l4.tcp_flags, now).map(|ct| Found { slot, ct, now })
}

/// The packet's reason, `XlateNew` when `new_flow` made its entries and
/// handed it back to this entry.
#[inline(always)]
fn first_of_new_flow(reason: Reason) -> Reason {
    match SCRATCH_NEW_V6.get_ptr_mut(0) {
        Some(made) if unsafe { *made } != 0 => {
            unsafe { *made = 0 };
            Reason::XlateNew
        }
        _ => reason,
    }
}

/// Makes the entries of the new flow the packet (forward `key`) starts,
/// then hands it to this hook's entry again, which translates it by them.
/// Runs in `path` after `classify`, with nothing of the packet's walk left:
/// the verifier walks the choice of a backend and the SNAT port probes
/// once, where `classify` would have it walk them once per way into them
/// (probes × ways beyond its limit). The second walk of the path costs new
/// flows a lookup; established ones nothing.
#[inline(always)]
fn new_flow<C: Frame, const FRAGMENTS: bool>(ctx: &C, key: &CtKeyV6, from_backend: bool) -> u32 {
    let Some(made) = SCRATCH_NEW_V6.get_ptr_mut(0) else {
        return counted((Reason::PassMalformed, C::PASS));
    };
    let ifindex = ctx.ifindex();
    // A second walk that finds no entry either (one gone at once) ends
    // here, not in another tail call.
    if unsafe { *made } != 0 {
        unsafe { *made = 0 };
        return refused(ifindex, key, (Reason::DropCtInsert, C::DROP));
    }
    let now = conntrack::now();
    let mut flow = NewFlow::default();
    match pick(ctx, key, now, &mut flow) {
        (Reason::XlateNew, _) => {}
        (Reason::PassNotOurs, action) if from_backend => {
            return counted((Reason::PassReplyNoFlow, action))
        }
        v @ (Reason::PassNotOurs, _) => return counted(v),
        (reason @ (Reason::RejectUnknownPort | Reason::RejectNoBackend), _) => {
            return refused(ifindex, key, reject(ctx, key.proto, reason))
        }
        v => return refused(ifindex, key, v),
    }
    if !snat(key, &mut flow, now) {
        return refused(ifindex, key, (Reason::DropSnatPortsExhausted, C::DROP));
    }
    show_snat(ifindex, key, &flow);
    sums_to_backend(key, &mut flow);
    sums_back(key, &mut flow);
    let ct = create(key, &flow, now);
    if ct.is_null() {
        return refused(ifindex, key, (Reason::DropCtInsert, C::DROP));
    }
    show_flow(ifindex, key, ct);
    unsafe { *made = 1 };
    if FRAGMENTS {
        ctx.to_v6_rare_path();
    } else {
        ctx.to_v6_path();
    }
    // The entry is being replaced (an upgrade): this packet is lost, the
    // flow's next one finds its entries.
    unsafe { *made = 0 };
    counted((Reason::DropCtInsert, C::DROP))
}

/// `v` on the first packet of a flow it refuses, counted and shown to
/// `xdplb monitor`.
#[inline(always)]
fn refused(ifindex: u32, key: &CtKeyV6, v: Verdict) -> u32 {
    show_refused(ifindex, v.0, key);
    counted(v)
}

// The events are built in frames of their own: an IPv6 event would not
// fit the entry's stack.

/// `monitor::refused`.
#[inline(never)]
fn show_refused(ifindex: u32, reason: Reason, key: &CtKeyV6) {
    monitor::refused(ifindex, reason, key);
}

/// `monitor::flow` of a new flow's forward entry `ct`.
#[inline(never)]
fn show_flow(ifindex: u32, key: &CtKeyV6, ct: *const CtValueV6) {
    monitor::flow(ifindex, Reason::XlateNew, key, ct);
}

/// `monitor::snat`, for a flow `snat` gave a port.
#[inline(never)]
fn show_snat(ifindex: u32, key: &CtKeyV6, flow: &NewFlow) {
    if flow.snat().is_some() {
        monitor::snat(ifindex, key, flow.backend, flow.svc_id, flow.snat);
    }
}

/// `monitor::malformed`.
#[inline(never)]
fn show_malformed(ifindex: u32, ip: *const Ipv6Hdr, proto: u8) {
    monitor::malformed(ifindex, ip, proto);
}

/// The entry of an established flow the packet replies to.
#[inline(always)]
fn reply_entry<const FRAGMENTS: bool>(p: &mut Packet) -> Option<Found> {
    set_dir(p.key, CT_DIR_REPLY);
    lookup::<FRAGMENTS>(p)
}

/// Whether `addr` is this node's IPv6 SNAT address.
#[inline(always)]
fn is_snat_addr(addr: [u32; 4]) -> bool {
    snat_addr() == Some(addr)
}

/// This node's IPv6 SNAT address, if the agent gave it one.
#[inline(always)]
fn snat_addr() -> Option<[u32; 4]> {
    CONFIG_V6
        .get_ptr(0)
        .map(|c| unsafe { (*c).snat_addr })
        .filter(|a| *a != [0; 4])
}

#[inline(always)]
fn transport<'k, C: Frame, const FRAGMENTS: bool>(
    ctx: &C,
    ip: *mut Ipv6Hdr,
    key: *mut CtKeyV6,
) -> Result<Packet<'k>, Verdict> {
    let upper = if FRAGMENTS {
        match parse::fragment_v6(ctx, ip) {
            FragmentV6::First(upper) => upper,
            FragmentV6::Later { proto, id } => {
                let reason = if follow_fragment(ip, proto, id) {
                    Reason::XlateFragment
                } else {
                    Reason::PassFragment
                };
                return Err((reason, C::PASS));
            }
            FragmentV6::Not => return Err((Reason::PassFragment, C::PASS)),
        }
    } else {
        parse::upper_v6(ctx, ip)
    };
    let (proto, off) = match upper {
        Upper::At { proto, off } => (proto, off),
        Upper::Fragment => {
            if !FRAGMENTS {
                ctx.to_v6_rare_path();
            }
            return Err((Reason::PassFragment, C::PASS));
        }
        Upper::Unwalked => return Err((Reason::PassIpv6ExtHeaders, C::PASS)),
    };
    if proto == icmp6::IPPROTO_ICMPV6 {
        return Err((Reason::PassIcmpv6, C::PASS));
    }
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return Err((Reason::PassUnsupportedProto, C::PASS));
    }
    let Some(l4) = parse::l4(ctx, proto, off) else {
        show_malformed(ctx.ifindex(), ip, proto);
        return Err((Reason::DropMalformed, C::DROP));
    };
    Ok(packet(ip, l4, off, proto, key))
}

/// The packet whose transport header `l4` lies at `off`, its forward key
/// written into `key`.
#[inline(always)]
fn packet<'k>(ip: *mut Ipv6Hdr, l4: L4, off: usize, proto: u8, key: *mut CtKeyV6) -> Packet<'k> {
    let ext_len = (off - ETH_HLEN - IPV6_HLEN) as u16;
    let payload_len = u16::from_be(unsafe { (*ip).payload_len });
    write_key(key, ip, l4.ports, proto);
    Packet {
        ip,
        l4_len: payload_len.wrapping_sub(ext_len),
        len: if payload_len == 0 {
            0
        } else {
            payload_len.saturating_add(IPV6_HLEN as u16)
        },
        key: unsafe { &mut *key },
        l4,
    }
}

/// Writes the packet's forward key into `key` (in a `KeyRoom`) as whole
/// 64-bit words, the words the flow cache compares, straight from the
/// headers: the IPv6 header holds the two addresses back to back in the
/// key's order, the transport header the ports. Field by field, the
/// addresses went through the stack twice on their way.
#[inline(always)]
fn write_key(key: *mut CtKeyV6, ip: *const Ipv6Hdr, ports: *const [u16; 2], proto: u8) {
    let words = key.cast::<u64>();
    unsafe {
        let addrs = (&raw const (*ip).src).cast::<u64>();
        for i in 0..4 {
            *words.add(i) = *addrs.add(i);
        }
        *words.add(4) = last_word(*ports.cast::<u32>(), proto, CT_DIR_FORWARD);
    }
}

/// Turns `key` (in a `KeyRoom`) to direction `dir`, writing its last word
/// whole.
#[inline(always)]
fn set_dir(key: &mut CtKeyV6, dir: u8) {
    let last = unsafe { (&raw mut *key).cast::<u64>().add(4) };
    unsafe { *last = last_word(*last as u32, key.proto, dir) };
}

/// A key's last 64-bit word: the ports as they lie in the transport
/// header, then `CtKeyV6::tail`. Written whole: a word load from narrower
/// stores cannot take their values from the store buffer (a stall each on
/// x86).
#[inline(always)]
fn last_word(ports: u32, proto: u8, dir: u8) -> u64 {
    ports as u64 | (CtKeyV6::tail(proto, dir) as u64) << 32
}

/// A backend's address and port.
type Backend = ([u32; 4], u16);

/// Fills in `flow`'s backend and service id, and whether it needs source
/// NAT, for a flow without an entry. Returns `XlateNew` then,
/// `PassNotOurs` when the destination is no frontend at all, else the
/// verdict of a refused flow. A plain verdict, not a `Result` of an
/// `Option`: the kernel refuses the BTF the compiler gives such an enum
/// as a function's return type (a union member at a non-zero offset).
#[inline(never)]
fn pick<C: Frame>(ctx: &C, key: &CtKeyV6, now: u64, flow: &mut NewFlow) -> Verdict {
    let decision = decide::new_flow(
        &select::MapsV6,
        &key.frontend(),
        key.src_addr,
        policy::in_cluster(ctx),
        &Client::Addr(key.src_addr),
        now,
        || key.hash(),
    );
    match decision {
        Decision::Backend { fe, backend, .. } => {
            flow.backend = (backend.addr, backend.port);
            flow.svc_id = fe.svc_id;
            flow.wants_snat = policy::needs_snat(&fe, backend.flags, backend.addr == key.src_addr);
            (Reason::XlateNew, C::PASS)
        }
        Decision::NotOurs => (Reason::PassNotOurs, C::PASS),
        Decision::Refused(reason) => (reason, C::DROP),
    }
}

/// `reject::send_v6`.
#[inline(never)]
fn reject<C: Frame>(ctx: &C, proto: u8, reason: Reason) -> Verdict {
    reject::send_v6(ctx, proto, reason)
}

/// Gives `flow` its SNAT address and port when it wants them; false when
/// no port is free. Without an IPv6 SNAT address the flow goes
/// untranslated, as with IPv4. Called for every new flow, so that the
/// verifier walks what follows along one path, not one per answer.
#[inline(never)]
fn snat(key: &CtKeyV6, flow: &mut NewFlow, now: u64) -> bool {
    if !flow.wants_snat {
        return true;
    }
    let Some(addr) = snat_addr() else {
        return true;
    };
    let cfg = conntrack::config();
    match policy::snat_port(flow.backend, addr, key, (&cfg, policy::SNAT_PROBES), now) {
        Some(port) => {
            stats::count(Reason::SnatNewFlow);
            flow.snat = (addr, port);
            true
        }
        None => false,
    }
}

/// `conntrack::sums` of `flow`, the forward half: with source NAT, both
/// halves in one function would take more stack than the entry leaves.
#[inline(never)]
fn sums_to_backend(key: &CtKeyV6, flow: &mut NewFlow) {
    flow.sums.to_backend = conntrack::sums(key, flow.backend, flow.snat()).to_backend;
}

/// The other half of `sums_to_backend`.
#[inline(never)]
fn sums_back(key: &CtKeyV6, flow: &mut NewFlow) {
    flow.sums.back = conntrack::sums(key, flow.backend, flow.snat()).back;
}

/// What a new flow's entries are made of. Holds no `Option`, whose BTF
/// the kernel would refuse (see `pick`).
#[derive(Default)]
struct NewFlow {
    backend: Backend,
    svc_id: u32,
    wants_snat: bool,
    /// The SNAT address and port; the unspecified address when none.
    snat: Backend,
    sums: FlowSums,
}

impl NewFlow {
    #[inline(always)]
    fn snat(&self) -> Option<Backend> {
        conntrack::is_set(self.snat.0).then_some(self.snat)
    }
}

/// `conntrack::create`; null when the entries could not be made (a
/// pointer, not an `Option`, which would not fit the registers a
/// BPF-to-BPF call returns in).
#[inline(never)]
fn create(key: &CtKeyV6, flow: &NewFlow, now: u64) -> *mut CtValueV6 {
    SCRATCH_CT_V6
        .get_ptr_mut(0)
        .and_then(|value| {
            conntrack::create(
                key,
                flow.backend,
                flow.svc_id,
                flow.snat(),
                &flow.sums,
                now,
                unsafe { &mut *value },
            )
        })
        .unwrap_or(core::ptr::null_mut())
}

/// Rewrites the packet by its flow's entry and sends it on. An entry from
/// connection tracking is updated by the packet, then copied into the
/// packet's flow cache slot, for later packets when they may use it; the
/// packet is translated by the copy. A packet this node routes itself
/// (`forward::routes_itself`) loses one from its hop limit; one whose hop
/// limit is spent is left as it is, to be answered with time exceeded
/// (`then.answer`). IPv6 routers never fragment: a packet too big for the
/// egress is left too, with its egress MTU, to be answered with Packet Too
/// Big. Either answer is about the packet as its sender sent it.
#[inline(always)]
fn translate<C: Frame, const FRAGMENTS: bool>(
    ctx: &C,
    p: &Packet,
    found: &Found,
    then: &mut Then,
) -> u32 {
    let key = &*p.key;
    let ct = if found.ct.is_null() {
        unsafe { &raw mut (*found.slot).ct }
    } else {
        let now = found.now;
        if conntrack::on_packet(key, found.ct, p.l4.tcp_flags, now) {
            reroute(ctx, key, found.ct);
        }
        let usable = flow_cache::usable(p.l4.tcp_flags, FRAGMENTS);
        flow_cache::keep(found.slot, key, found.ct, usable, now)
    };
    let size = Size {
        len: p.len,
        fragmentable: false,
    };
    // The call only when the helper must answer: most packets are small
    // or routed by the kernel, and a call costs each packet a return.
    let hop = forward::routes_itself(ct, false);
    if hop && unsafe { (*p.ip).hop_limit } <= 1 {
        then.answer = reject::ICMP6_TIME_EXCEEDED;
        return C::DROP;
    }
    let mtu = if forward::surely_fits(&size, ct) {
        0
    } else {
        too_big_for(ctx, p.len, key, ct)
    };
    if mtu != 0 {
        (then.answer, then.mtu) = (reject::ICMP6_PACKET_TOO_BIG, mtu);
        return C::DROP;
    }
    let partial = nat::rewrite_v6(p.ip, &p.l4, p.l4_len, ct, key.dir == CT_DIR_FORWARD, hop);
    if FRAGMENTS {
        remember_fragment(key, p.ip);
    }
    stats::count_service(unsafe { (*ct).svc_id }, ctx.len() as u64);
    forward::send(ctx, ct, false, partial)
}

// `pick`, `reject`, `snat`, the sums, `create`, `reroute`, `too_big_for`,
// `answer`, `follow_fragment` and `remember_fragment` are
// functions of their own (BPF-to-BPF calls), as is the mirroring of a
// state change in connection tracking (`conntrack::mirror_v6`), each
// called from `path`'s frame: inlined, their variables would not fit the
// 512-byte stack beside the entry's, and nested, their frames would add
// up. What every packet through `CT_V6` runs is inlined: a call costs a
// return, which the kernel's return thunk makes dear.

/// `frags::follow_v6`: its key would not fit the entry's stack.
#[inline(never)]
fn follow_fragment(ip: *mut Ipv6Hdr, proto: u8, id: u32) -> bool {
    frags::follow_v6(ip, proto, id)
}

/// `frags::remember_v6`: the later fragments of the datagram follow its
/// first, `ip` as rewritten; `key` is its tuple as it arrived.
#[inline(never)]
fn remember_fragment(key: &CtKeyV6, ip: *const Ipv6Hdr) {
    frags::remember_v6(key, ip);
}

/// `forward::resolve`: the flow's forwarding decision is due again.
#[inline(never)]
fn reroute<C: Frame>(ctx: &C, key: &CtKeyV6, ct: *mut CtValueV6) {
    forward::resolve(ctx, key, ct);
}

/// The MTU of the flow's egress when the packet, `len` bytes, is too big
/// for it, else 0.
#[inline(never)]
fn too_big_for<C: Frame>(ctx: &C, len: u16, key: &CtKeyV6, ct: *mut CtValueV6) -> u32 {
    let size = Size {
        len,
        fragmentable: false,
    };
    match forward::check(ctx, size, key, ct, false) {
        Fit::TellSender(mtu) => mtu,
        _ => 0,
    }
}

/// `reject::flow_error_v6` of type `icmp_type` (with `mtu` for Packet Too
/// Big), counted and shown to `xdplb monitor` with the flow (`key`): a
/// side event, the packet stays counted under its flow's path. One call
/// for both errors, so that the verifier walks the answer once.
#[inline(never)]
fn answer<C: Frame>(ctx: &C, key: &CtKeyV6, icmp_type: u8, mtu: u32) -> u32 {
    let (value, reasons) = if icmp_type == reject::ICMP6_PACKET_TOO_BIG {
        (mtu, (Reason::IcmpFragNeeded, Reason::IcmpFragNeededFailed))
    } else {
        (
            0,
            (Reason::IcmpTimeExceeded, Reason::IcmpTimeExceededFailed),
        )
    };
    let (reason, action) = match reject::flow_error_v6(ctx, icmp_type, value) {
        Some(action) => (reasons.0, action),
        None => (reasons.1, C::DROP),
    };
    stats::count(reason);
    monitor::flow_found(ctx.ifindex(), reason, key, |k| CT_V6.get_ptr(k));
    action
}
