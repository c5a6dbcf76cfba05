//! The packet path, top to bottom: parse, look up, select, rewrite, forward.
//! Each function returns the one `Reason` the packet is counted under and
//! the hook's action; `handle` counts it, so no path can forget to. The
//! path is generic over the hook (`Frame`): XDP and tc run this same code.
//!
//! Unsafe in this module: header reads through pointers `parse::ptr_at`
//! checked, including `flow_key`'s 8- and 4-byte loads at 2-byte aligned
//! packet offsets, which the verifier allows for packet pointers on
//! architectures with efficient unaligned access; reads through `ADDRS_V4`,
//! `CONFIG` and `CT_V4` pointers, valid until the program returns; and a
//! volatile read of an `ADDR_FILTER` word whose index is masked into the
//! array, volatile because the agent writes the words outside the program.
use lb_common::{
    addr,
    decide::{self, Client, Decision},
    filter::{position, position_v6, AddrSet, FILTER_WORDS},
    CtKeyV4, CtValueV4, FlowCacheEntryV4, Reason, ADDR_FRONTEND, CT_DIR_FORWARD, CT_DIR_REPLY,
    PROTO_TCP, PROTO_UDP,
};

use crate::{
    arp, conntrack, flow_cache,
    forward::{self, Fit},
    frags,
    frame::Frame,
    icmp, icmp6,
    maps::{ADDRS_V4, ADDR_FILTER, CONFIG},
    monitor, nat, ndp,
    parse::{
        self, EthHdr, Ipv4Hdr, Ipv6Hdr, ETH_HLEN, ETH_P_IP, ETH_P_IPV6, IP_MF, IP_OFFSET_MASK, L4,
    },
    policy, reject, select, service6, stats,
};

pub type Verdict = (Reason, u32);

#[inline(always)]
pub fn handle<C: Frame>(ctx: &C) -> u32 {
    counted(classify(ctx))
}

/// Counts the verdict on a packet and gives its action.
#[inline(always)]
pub fn counted((reason, action): Verdict) -> u32 {
    stats::count(reason);
    action
}

#[inline(always)]
fn classify<C: Frame>(ctx: &C) -> Verdict {
    let Some(eth) = parse::ptr_at::<EthHdr>(ctx, 0) else {
        return (Reason::PassMalformed, C::PASS);
    };
    let eth_proto = unsafe { (*eth).proto };
    if eth_proto == ETH_P_IPV6 {
        // Checked once here for the IPv6 programs behind.
        match parse::ptr_at::<Ipv6Hdr>(ctx, ETH_HLEN) {
            Some(ip) if parse::is_version_6(ip) => {}
            _ => return (Reason::PassMalformed, C::PASS),
        }
        if let Some(v) = ndp::advertise(ctx) {
            return v;
        }
        // ICMPv6 (errors to translate, NDP and echo to pass) goes to the
        // entry for rare packets, so that the IPv6 path's own entry needs
        // no frame apart from `icmp6`'s: without that entry it is passed
        // by the path's.
        if icmp6::first_header_is_icmpv6(ctx) {
            ctx.to_v6_rare_path();
        }
        // The IPv6 path's first test, made before its tail call: most of
        // a node's IPv6 traffic is for no Service, and is passed without
        // a second program. The path makes it again for its own use.
        if let Some(ip) = parse::ptr_at::<Ipv6Hdr>(ctx, ETH_HLEN) {
            let sides = sides_v6(ip);
            if sides == (false, false) {
                return (Reason::PassNotOurs, C::PASS);
            }
            if let Some(v) = service6::established(ctx, ip, sides) {
                return v;
            }
        }
        ctx.to_v6_path();
        return (Reason::PassIpv6PathMissing, C::PASS);
    }
    if eth_proto != ETH_P_IP {
        if eth_proto == arp::ETH_P_ARP {
            if let Some(v) = arp::reply(ctx) {
                return v;
            }
        }
        return (Reason::PassNotIpv4, C::PASS);
    }
    let Some(ip) = parse::ptr_at::<Ipv4Hdr>(ctx, ETH_HLEN) else {
        return (Reason::PassMalformed, C::PASS);
    };
    let (src, dst, proto) = unsafe { ((*ip).src, (*ip).dst, (*ip).proto) };
    if proto == icmp::IPPROTO_ICMP {
        if let Some(v) = icmp::translate_error(ctx, ip) {
            return v;
        }
    }
    if maybe_in(position(dst, AddrSet::Frontend)) {
        if let Some(v) = to_frontend(ctx, ip) {
            return v;
        }
    }
    if maybe_in(position(src, AddrSet::Backend)) {
        return from_backend(ctx, ip);
    }
    (Reason::PassNotOurs, C::PASS)
}

/// Whether an IPv6 packet may be to a frontend and may be from a backend,
/// by the address filter. `ip` is checked to lie in the frame.
#[inline(always)]
pub fn sides_v6(ip: *const Ipv6Hdr) -> (bool, bool) {
    let (src, dst) = unsafe { ((*ip).src, (*ip).dst) };
    (
        maybe_in(position_v6(dst, AddrSet::Frontend)),
        maybe_in(position_v6(src, AddrSet::Backend)),
    )
}

/// The address filter: `false` means certainly not in `set`. `(word,
/// bit)` is the address's `filter::position`.
#[inline(always)]
fn maybe_in((word, bit): (u32, u64)) -> bool {
    let word = word as usize & (FILTER_WORDS as usize - 1);
    // Volatile: the agent writes the words behind the compiler's back.
    let bits =
        unsafe { core::ptr::read_volatile((&raw const ADDR_FILTER).cast::<u64>().add(word)) };
    bits & bit != 0
}

/// Whether `addr` really is a frontend address (the filter may have lied).
#[inline(always)]
pub fn is_frontend_addr(addr: u32) -> bool {
    ADDRS_V4
        .get_ptr(addr)
        .is_some_and(|i| unsafe { (*i).flags } & ADDR_FRONTEND != 0)
}

/// A TCP or UDP packet whose headers are all inside the frame.
struct Packet {
    ip: *mut Ipv4Hdr,
    /// IPv4 header length in bytes (options included).
    ihl: usize,
    proto: u8,
    l4: L4,
    /// The first fragment of a fragmented datagram: its translation is
    /// remembered for the fragments that follow.
    first_fragment: bool,
}

#[inline(always)]
fn transport<C: Frame>(ctx: &C, ip: *mut Ipv4Hdr) -> Result<Packet, Verdict> {
    let (vihl, frag, proto) = unsafe { ((*ip).vihl, (*ip).frag_off, (*ip).proto) };
    let ihl = ((vihl & 0x0f) as usize) * 4;
    if vihl >> 4 != 4 || ihl < 20 {
        return Err((Reason::DropMalformed, C::DROP));
    }
    if frag & IP_OFFSET_MASK != 0 {
        let reason = if frags::follow(ip) {
            Reason::XlateFragment
        } else {
            Reason::PassFragment
        };
        return Err((reason, C::PASS));
    }
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return Err((Reason::PassUnsupportedProto, C::PASS));
    }
    let Some(l4) = parse::l4(ctx, proto, ETH_HLEN + ihl) else {
        return Err((Reason::DropMalformed, C::DROP));
    };
    Ok(Packet {
        ip,
        ihl,
        proto,
        l4,
        first_fragment: frag & IP_MF != 0,
    })
}

/// `None` when the destination turns out to be no frontend address.
/// Established flows are found in connection tracking before any service
/// lookup: their entry holds everything the rewrite needs.
#[inline(always)]
fn to_frontend<C: Frame>(ctx: &C, ip: *mut Ipv4Hdr) -> Option<Verdict> {
    let dst = unsafe { (*ip).dst };
    let p = match transport(ctx, ip) {
        Ok(p) => p,
        Err(v) if v.0 == Reason::XlateFragment || is_frontend_addr(dst) => {
            return Some(unparsed(ctx, ip, v))
        }
        Err(_) => return None,
    };
    let key = flow_key(&p, CT_DIR_FORWARD);
    let jiffies = flow_cache::jiffies();
    let slot = flow_cache::slot(&key, p.l4.tcp_flags, p.first_fragment);
    if let Some(v) = cached(ctx, &p, &key, slot, jiffies, Reason::XlateEstablishedCached) {
        return Some(v);
    }
    let now = conntrack::now();
    if is_snat_addr(key.dst_addr) {
        if let Some(v) = reply(ctx, &p, now) {
            return Some(v);
        }
    }
    let (ct, reason) = match conntrack::lookup(&key, p.l4.tcp_flags, now) {
        Some(ct) => (ct, Reason::XlateEstablished),
        None => match new_flow(ctx, &p, &key, now) {
            Ok(ct) => {
                monitor::flow(ctx.ifindex(), Reason::XlateNew, &key, ct);
                (ct, Reason::XlateNew)
            }
            Err(v) => {
                if let Some((reason, _)) = v {
                    monitor::refused(ctx.ifindex(), reason, &key);
                }
                return v;
            }
        },
    };
    let cache = slot.map(|s| (s, jiffies));
    Some((reason, translate(ctx, &p, &key, ct, now, cache)))
}

/// A reply to a source-NATed flow comes back to the node's SNAT address,
/// which is also a NodePort address, on any port (a flow keeps its
/// client's port when it can): such a packet that is no established
/// NodePort flow is looked up as a reply before it can become a new flow.
/// Reads only the field it needs: this runs on every forward packet that
/// misses the flow cache.
#[inline(always)]
fn is_snat_addr(addr: u32) -> bool {
    CONFIG
        .get_ptr(0)
        .is_some_and(|c| addr != 0 && unsafe { (*c).snat_addr } == addr)
}

/// Applies the frontend's policies, picks a backend for a flow without an
/// entry and creates its entries. `Err` carries the verdict when the flow is
/// refused, or `None` when the destination is no frontend at all.
#[inline(always)]
fn new_flow<C: Frame>(
    ctx: &C,
    p: &Packet,
    key: &CtKeyV4,
    now: u64,
) -> Result<*mut CtValueV4, Option<Verdict>> {
    // The maps hold NodePorts at 127.0.0.1 for the socket hooks alone: a
    // loopback destination on the wire is a martian no node may route
    // (kube-proxy's CVE-2020-8558 let such packets reach localhost).
    if addr::is_loopback(key.dst_addr) {
        return Err(None);
    }
    let fe_key = key.frontend();
    let in_cluster = policy::in_cluster(ctx);
    let hash = || key.hash();
    let client = Client::Addr(key.src_addr);
    let (fe, be) = match decide::new_flow(
        &select::Maps,
        &fe_key,
        key.src_addr,
        in_cluster,
        &client,
        now,
        hash,
    ) {
        Decision::Backend { fe, backend, .. } => (fe, backend),
        Decision::NotOurs => return Err(None),
        Decision::Refused(reason @ (Reason::RejectUnknownPort | Reason::RejectNoBackend)) => {
            return Err(Some(reject::send(ctx, p.ihl, p.proto, reason)))
        }
        Decision::Refused(reason) => return Err(Some((reason, C::DROP))),
    };
    let cfg = conntrack::config();
    let snat = if cfg.snat_addr != 0 && policy::needs_snat(&fe, be.flags, be.addr == key.src_addr) {
        let probes = (&cfg, policy::SNAT_PROBES);
        match policy::snat_port((be.addr, be.port), cfg.snat_addr, key, probes, now) {
            Some(port) => {
                stats::count(Reason::SnatNewFlow);
                monitor::snat(
                    ctx.ifindex(),
                    key,
                    (be.addr, be.port),
                    fe.svc_id,
                    (cfg.snat_addr, port),
                );
                Some((cfg.snat_addr, port))
            }
            None => return Err(Some((Reason::DropSnatPortsExhausted, C::DROP))),
        }
    } else {
        None
    };
    let backend = (be.addr, be.port);
    let sums = conntrack::sums(key, backend, snat);
    let mut value = CtValueV4::default();
    conntrack::create(key, backend, fe.svc_id, snat, &sums, now, &mut value)
        .ok_or(Some((Reason::DropCtInsert, C::DROP)))
}

/// The final verdict `v` on a packet whose transport header `transport`
/// did not hand out; a malformed one is shown to `xdplb monitor` here,
/// where it is known to be dropped.
#[inline(always)]
fn unparsed<C: Frame>(ctx: &C, ip: *mut Ipv4Hdr, v: Verdict) -> Verdict {
    if v.0 == Reason::DropMalformed {
        monitor::malformed(ctx.ifindex(), ip, unsafe { (*ip).proto });
    }
    v
}

/// Replies: from a backend back to the client, as the frontend.
#[inline(always)]
fn from_backend<C: Frame>(ctx: &C, ip: *mut Ipv4Hdr) -> Verdict {
    let p = match transport(ctx, ip) {
        Ok(p) => p,
        Err((Reason::PassUnsupportedProto, a)) => return (Reason::PassNotOurs, a),
        Err(v) => return unparsed(ctx, ip, v),
    };
    reply(ctx, &p, conntrack::now()).unwrap_or((Reason::PassReplyNoFlow, C::PASS))
}

/// Translates `p` as a reply if its flow is tracked.
#[inline(always)]
fn reply<C: Frame>(ctx: &C, p: &Packet, now: u64) -> Option<Verdict> {
    let key = flow_key(p, CT_DIR_REPLY);
    let jiffies = flow_cache::jiffies();
    let slot = flow_cache::slot(&key, p.l4.tcp_flags, p.first_fragment);
    if let Some(v) = cached(ctx, p, &key, slot, jiffies, Reason::XlateReplyCached) {
        return Some(v);
    }
    let ct = conntrack::lookup(&key, p.l4.tcp_flags, now)?;
    let cache = slot.map(|s| (s, jiffies));
    Some((Reason::XlateReply, translate(ctx, p, &key, ct, now, cache)))
}

/// Translates the packet by the copy of its flow's entry in its flow cache
/// `slot`, if that holds a valid one, and counts it under `reason`.
#[inline(always)]
fn cached<C: Frame>(
    ctx: &C,
    p: &Packet,
    key: &CtKeyV4,
    slot: Option<*mut FlowCacheEntryV4>,
    jiffies: u64,
    reason: Reason,
) -> Option<Verdict> {
    let ct = flow_cache::get(slot?, key, jiffies)?;
    let fit = forward::check(ctx, forward::size_v4(p.ip), key, ct, false);
    let kernel = matches!(fit, Fit::Fragment);
    let hop = forward::routes_itself(ct, kernel);
    if let Some(action) = answer(ctx, p, key, ct, fit, hop) {
        return Some((reason, action));
    }
    let partial = nat::rewrite(p.ip, &p.l4, p.ihl, ct, key.dir == CT_DIR_FORWARD, hop);
    stats::count_service(unsafe { (*ct).svc_id }, ctx.len() as u64);
    Some((reason, forward::send(ctx, ct, kernel, partial)))
}

/// What a router answers instead of sending the packet on, if anything:
/// time exceeded when this node routes it (`hop`) and its TTL is spent,
/// fragmentation needed when it is too big for the egress (`fit`). Either
/// quotes the packet as its sender sent it.
#[inline(always)]
fn answer<C: Frame>(
    ctx: &C,
    p: &Packet,
    key: &CtKeyV4,
    ct: *mut CtValueV4,
    fit: Fit,
    hop: bool,
) -> Option<u32> {
    if hop && unsafe { (*p.ip).ttl } <= 1 {
        return Some(reject::time_exceeded(ctx, p.ihl, key, ct));
    }
    match fit {
        Fit::TellSender(mtu) => Some(reject::frag_needed(ctx, p.ihl, mtu, key, ct)),
        _ => None,
    }
}

/// The connection-tracking key of the packet's tuple, in direction `dir`.
/// The headers hold the addresses and the ports in the key's own order, so
/// two loads build its two words (`CtKeyV4::from_words`).
#[inline(always)]
fn flow_key(p: &Packet, dir: u8) -> CtKeyV4 {
    let (addrs, ports) = unsafe {
        (
            *(&raw const (*p.ip).src).cast::<u64>(),
            *p.l4.ports.cast::<u32>(),
        )
    };
    CtKeyV4::from_words([
        addrs,
        ports as u64 | (p.proto as u64) << 32 | (dir as u64) << 40,
    ])
}

/// Rewrites the packet by its flow's entry and sends it on. Forward packets
/// go to the backend (from the SNAT address, if any); replies come from the
/// frontend (back to the client the SNAT address stood for). A first
/// fragment's translation is remembered for the fragments that follow, and
/// the entry is copied into the packet's flow cache slot, if it has one
/// (`cache` is the slot and the time in jiffies). A packet too big for the
/// egress, or with its TTL spent where this node routes it, is answered
/// instead (`answer`).
#[inline(always)]
fn translate<C: Frame>(
    ctx: &C,
    p: &Packet,
    key: &CtKeyV4,
    ct: *mut CtValueV4,
    now: u64,
    cache: Option<(*mut FlowCacheEntryV4, u64)>,
) -> u32 {
    let refresh = conntrack::on_packet(key, ct, p.l4.tcp_flags, now);
    let fit = forward::check(ctx, forward::size_v4(p.ip), key, ct, refresh);
    let kernel = matches!(fit, Fit::Fragment);
    let hop = forward::routes_itself(ct, kernel);
    if let Some(action) = answer(ctx, p, key, ct, fit, hop) {
        return action;
    }
    let frag = p.first_fragment.then(|| frags::first_key(p.ip));
    let partial = nat::rewrite(p.ip, &p.l4, p.ihl, ct, key.dir == CT_DIR_FORWARD, hop);
    if let Some(k) = frag {
        frags::remember(&k, p.ip);
    }
    stats::count_service(unsafe { (*ct).svc_id }, ctx.len() as u64);
    let action = forward::send(ctx, ct, kernel, partial);
    if let Some((slot, jiffies)) = cache {
        flow_cache::put(slot, key, ct, now, jiffies);
    }
    action
}
