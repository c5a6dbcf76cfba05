//! Reasons counted in `STATS`: every packet the program sees lands in exactly
//! one path counter, and the benchmark reads them to prove which path ran.

#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    PassNotIpv4 = 0,
    PassNotOurs = 1,
    XlateNew = 2,
    XlateEstablished = 3,
    XlateReply = 4,
    RejectNoBackend = 5,
    RejectUnknownPort = 6,
    PassMalformed = 7,
    PassFragment = 8,
    PassUnsupportedProto = 9,
    PassReplyNoFlow = 10,
    CtClash = 11,
    FwdRedirect = 12,
    FwdKernel = 13,
    RejectFailed = 14,
    DropMalformed = 15,
    DropCtInsert = 16,
    DropNoLocalBackend = 17,
    DropSourceRange = 18,
    DropSnatPortsExhausted = 19,
    SnatNewFlow = 20,
    XlateIcmpError = 21,
    XlateFragment = 22,
    SockTranslated = 23,
    SockRefused = 24,
    /// Established and reply packets served from this CPU's flow cache
    /// instead of `CT_V4`.
    XlateEstablishedCached = 25,
    XlateReplyCached = 26,
    /// Side counters of `FwdRedirect`'s kind, on the tc pod path.
    FwdPeer = 27,
    FwdNeigh = 28,
    /// A translated packet too big for its egress, answered with ICMP
    /// fragmentation needed quoting the packet as its sender sent it.
    IcmpFragNeeded = 29,
    /// A new flow took the SNAT port of a stale flow that never had a reply.
    SnatPortReclaimed = 30,
    /// A pod's UDP socket addressed a frontend; the socket hooks left it to
    /// the per-packet path.
    SockUdpLeftToPath = 31,
}

impl Reason {
    pub const COUNT: u32 = 32;
    pub const ALL: [Reason; Self::COUNT as usize] = [
        Reason::PassNotIpv4,
        Reason::PassNotOurs,
        Reason::XlateNew,
        Reason::XlateEstablished,
        Reason::XlateReply,
        Reason::RejectNoBackend,
        Reason::RejectUnknownPort,
        Reason::PassMalformed,
        Reason::PassFragment,
        Reason::PassUnsupportedProto,
        Reason::PassReplyNoFlow,
        Reason::CtClash,
        Reason::FwdRedirect,
        Reason::FwdKernel,
        Reason::RejectFailed,
        Reason::DropMalformed,
        Reason::DropCtInsert,
        Reason::DropNoLocalBackend,
        Reason::DropSourceRange,
        Reason::DropSnatPortsExhausted,
        Reason::SnatNewFlow,
        Reason::XlateIcmpError,
        Reason::XlateFragment,
        Reason::SockTranslated,
        Reason::SockRefused,
        Reason::XlateEstablishedCached,
        Reason::XlateReplyCached,
        Reason::FwdPeer,
        Reason::FwdNeigh,
        Reason::IcmpFragNeeded,
        Reason::SnatPortReclaimed,
        Reason::SockUdpLeftToPath,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Reason::PassNotIpv4 => "pass_not_ipv4",
            Reason::PassNotOurs => "pass_not_ours",
            Reason::XlateNew => "xlate_new_flow",
            Reason::XlateEstablished => "xlate_established",
            Reason::XlateReply => "xlate_reply",
            Reason::RejectNoBackend => "reject_no_backend",
            Reason::RejectUnknownPort => "reject_unknown_port",
            Reason::PassMalformed => "pass_malformed",
            Reason::PassFragment => "pass_fragment",
            Reason::PassUnsupportedProto => "pass_unsupported_proto",
            Reason::PassReplyNoFlow => "pass_reply_no_flow",
            Reason::CtClash => "ct_clash",
            Reason::FwdRedirect => "fwd_redirect",
            Reason::FwdKernel => "fwd_kernel",
            Reason::RejectFailed => "reject_failed",
            Reason::DropMalformed => "drop_malformed",
            Reason::DropCtInsert => "drop_ct_insert_failed",
            Reason::DropNoLocalBackend => "drop_no_local_backend",
            Reason::DropSourceRange => "drop_source_range",
            Reason::DropSnatPortsExhausted => "drop_snat_ports_exhausted",
            Reason::SnatNewFlow => "snat_new_flow",
            Reason::XlateIcmpError => "xlate_icmp_error",
            Reason::XlateFragment => "xlate_later_fragment",
            Reason::SockTranslated => "socket_translated",
            Reason::SockRefused => "socket_refused",
            Reason::XlateEstablishedCached => "xlate_established_cached",
            Reason::XlateReplyCached => "xlate_reply_cached",
            Reason::FwdPeer => "fwd_redirect_peer",
            Reason::FwdNeigh => "fwd_redirect_neigh",
            Reason::IcmpFragNeeded => "icmp_frag_needed_sent",
            Reason::SnatPortReclaimed => "snat_port_reclaimed",
            Reason::SockUdpLeftToPath => "socket_udp_left_to_packet_path",
        }
    }
}
