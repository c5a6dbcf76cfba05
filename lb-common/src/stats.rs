//! Reasons counted in `STATS`, from one list: value, name and kind of each
//! are written once, and the enum, `ALL`, `COUNT` and the names follow.
//!
//! Every packet the deciding programs (XDP `lb`, tc `lb_pod`) see is
//! counted under exactly one `Kind::Verdict`: what happened to it (`lb_ext`
//! only delivers what XDP decided). The packet fuzzer checks this. `Kind::Side` events count beside
//! a verdict (how a translated packet left, a source-NAT port taken).
//! `Kind::Socket` counts the socket hooks' decisions, one per connect or
//! datagram. The benchmark reads the verdicts to prove which path ran.

/// What a reason counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Verdict,
    Side,
    Socket,
}

macro_rules! reasons {
    ($($(#[$doc:meta])* $variant:ident = $value:literal, $name:literal, $kind:ident;)*) => {
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Reason {
            $($(#[$doc])* $variant = $value,)*
        }

        impl Reason {
            pub const ALL: &'static [Reason] = &[$(Reason::$variant,)*];
            pub const COUNT: u32 = Self::ALL.len() as u32;

            /// The name metrics, `xdplb stats` and `xdplb monitor` show.
            pub const fn name(self) -> &'static str {
                match self {
                    $(Reason::$variant => $name,)*
                }
            }

            pub const fn kind(self) -> Kind {
                match self {
                    $(Reason::$variant => Kind::$kind,)*
                }
            }
        }
    };
}

reasons! {
    PassNotIpv4 = 0, "pass_not_ipv4", Verdict;
    PassNotOurs = 1, "pass_not_ours", Verdict;
    XlateNew = 2, "xlate_new_flow", Verdict;
    XlateEstablished = 3, "xlate_established", Verdict;
    XlateReply = 4, "xlate_reply", Verdict;
    RejectNoBackend = 5, "reject_no_backend", Verdict;
    RejectUnknownPort = 6, "reject_unknown_port", Verdict;
    PassMalformed = 7, "pass_malformed", Verdict;
    PassFragment = 8, "pass_fragment", Verdict;
    PassUnsupportedProto = 9, "pass_unsupported_proto", Verdict;
    PassReplyNoFlow = 10, "pass_reply_no_flow", Verdict;
    /// Another CPU created the same flow first; this packet used its entry.
    CtClash = 11, "ct_clash", Side;
    FwdRedirect = 12, "fwd_redirect", Side;
    FwdKernel = 13, "fwd_kernel", Side;
    /// A reject (RST or ICMP unreachable) could not be built; dropped.
    RejectFailed = 14, "reject_failed", Verdict;
    DropMalformed = 15, "drop_malformed", Verdict;
    DropCtInsert = 16, "drop_ct_insert_failed", Verdict;
    DropNoLocalBackend = 17, "drop_no_local_backend", Verdict;
    DropSourceRange = 18, "drop_source_range", Verdict;
    DropSnatPortsExhausted = 19, "drop_snat_ports_exhausted", Verdict;
    SnatNewFlow = 20, "snat_new_flow", Side;
    XlateIcmpError = 21, "xlate_icmp_error", Verdict;
    XlateFragment = 22, "xlate_later_fragment", Verdict;
    SockTranslated = 23, "socket_translated", Socket;
    SockRefused = 24, "socket_refused", Socket;
    /// Established and reply packets served from this CPU's flow cache
    /// instead of `CT_V4`.
    XlateEstablishedCached = 25, "xlate_established_cached", Verdict;
    XlateReplyCached = 26, "xlate_reply_cached", Verdict;
    /// Kinds of `FwdRedirect`, on the tc pod path.
    FwdPeer = 27, "fwd_redirect_peer", Side;
    FwdNeigh = 28, "fwd_redirect_neigh", Side;
    /// A translated packet too big for its egress, answered with ICMP
    /// fragmentation needed quoting the packet as its sender sent it.
    IcmpFragNeeded = 29, "icmp_frag_needed_sent", Side;
    /// A new flow took the SNAT port of a stale flow that never had a reply.
    SnatPortReclaimed = 30, "snat_port_reclaimed", Side;
    /// A pod's UDP socket addressed a frontend; the socket hooks left it to
    /// the per-packet path.
    SockUdpLeftToPath = 31, "socket_udp_left_to_packet_path", Socket;
    /// The fragmentation-needed answer could not be built; the packet is
    /// dropped under its flow's verdict.
    IcmpFragNeededFailed = 32, "icmp_frag_needed_failed", Side;
    /// An `xdplb monitor` event found the ring buffer full; the reader is
    /// behind.
    MonitorEventsLost = 33, "monitor_events_lost", Side;
    /// An ARP request for a LoadBalancer address this node announces on
    /// the interface it came in by, answered from the packet path.
    ArpReply = 34, "arp_reply", Verdict;
    /// An IPv6 packet with more extension headers before its transport
    /// header than the path walks, or a truncated one.
    PassIpv6ExtHeaders = 35, "pass_ipv6_ext_headers", Verdict;
    /// ICMPv6: neighbour discovery, MLD and errors, all the kernel's.
    PassIcmpv6 = 36, "pass_icmpv6", Verdict;
    /// An IPv6 packet found no IPv6 entry program to hand it to (the
    /// kernel refused it, or the agent has not filled its slot yet).
    PassIpv6PathMissing = 37, "pass_ipv6_path_missing", Verdict;
    /// A Neighbour Solicitation for a LoadBalancer address this node
    /// announces on the interface it came in by, answered from the packet
    /// path with a Neighbour Advertisement.
    NdpAdvert = 38, "ndp_advert", Verdict;
    /// A translated packet the data plane would have routed itself with
    /// its TTL (hop limit) at 1, answered with ICMP time exceeded quoting
    /// it as its sender sent it, as a router does.
    IcmpTimeExceeded = 39, "icmp_time_exceeded_sent", Side;
    /// The time-exceeded answer could not be built; the packet is dropped
    /// under its flow's verdict.
    IcmpTimeExceededFailed = 40, "icmp_time_exceeded_failed", Side;
}

impl Reason {
    /// The reason whose value (a `STATS` index, an event's) is `value`.
    pub fn from_value(value: u32) -> Option<Reason> {
        Self::ALL.get(value as usize).copied()
    }

    pub fn from_name(name: &str) -> Option<Reason> {
        Self::ALL.iter().copied().find(|r| r.name() == name)
    }
}

// `STATS` is indexed by value: the values must be 0, 1, 2, ... in order.
const _: () = {
    let mut i = 0;
    while i < Reason::ALL.len() {
        assert!(Reason::ALL[i] as usize == i);
        i += 1;
    }
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_kinds_follow_their_prefix() {
        let mut names: Vec<&str> = Reason::ALL.iter().map(|r| r.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), Reason::ALL.len());
        for r in Reason::ALL {
            let name = r.name();
            if name.starts_with("socket_") {
                assert_eq!(r.kind(), Kind::Socket, "{name}");
            }
            if ["pass_", "drop_", "reject_no", "reject_unknown"]
                .iter()
                .any(|p| name.starts_with(p))
            {
                assert_eq!(r.kind(), Kind::Verdict, "{name}");
            }
        }
    }
}
