//! TCP connection-state transitions kept in `CtValueV4::state`; pure so the
//! host tests them and the packet path only applies the result.

/// Client sent FIN.
pub const STATE_FIN_FORWARD: u8 = 1;
/// Backend sent FIN.
pub const STATE_FIN_REPLY: u8 = 2;
/// RST seen, or FIN from both sides: the entry lives only for the closing timeout.
pub const STATE_CLOSING: u8 = 4;
/// A reply was seen: the flow is established (SYN timeout no longer applies).
pub const STATE_SEEN_REPLY: u8 = 8;
/// The cached forwarding decision in the entry is valid.
pub const STATE_ROUTED: u8 = 16;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// New state after a TCP segment with `flags` travelled in direction `reply`.
#[inline(always)]
pub const fn tcp_next(state: u8, flags: u8, reply: bool) -> u8 {
    let mut s = state;
    if reply {
        s |= STATE_SEEN_REPLY;
    }
    if flags & TCP_RST != 0 {
        s |= STATE_CLOSING;
    }
    if flags & TCP_FIN != 0 {
        s |= if reply {
            STATE_FIN_REPLY
        } else {
            STATE_FIN_FORWARD
        };
    }
    if s & (STATE_FIN_FORWARD | STATE_FIN_REPLY) == STATE_FIN_FORWARD | STATE_FIN_REPLY {
        s |= STATE_CLOSING;
    }
    s
}

/// Lifetime in seconds of an entry in `state`, for protocol `proto`. A UDP
/// flow that never saw a reply has a lifetime of its own, as netfilter's
/// unreplied UDP: floods of one-packet flows (and the SNAT ports they
/// hold) then drain faster.
#[inline(always)]
pub const fn lifetime_s(cfg: &crate::Config, proto: u8, state: u8) -> u32 {
    if proto != crate::PROTO_TCP {
        if state & STATE_SEEN_REPLY == 0 {
            cfg.udp_unreplied_timeout_s
        } else {
            cfg.udp_timeout_s
        }
    } else if state & STATE_CLOSING != 0 {
        cfg.tcp_closing_timeout_s
    } else if state & STATE_SEEN_REPLY == 0 {
        cfg.tcp_syn_timeout_s
    } else {
        cfg.tcp_established_timeout_s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Config, PROTO_TCP, PROTO_UDP};

    #[test]
    fn fin_from_both_sides_closes() {
        let s = tcp_next(0, TCP_SYN, false);
        let s = tcp_next(s, TCP_SYN | TCP_ACK, true);
        assert_eq!(s & STATE_CLOSING, 0);
        let s = tcp_next(s, TCP_FIN | TCP_ACK, false);
        assert_eq!(s & STATE_CLOSING, 0, "half-closed stays open");
        let s = tcp_next(s, TCP_FIN | TCP_ACK, true);
        assert_ne!(s & STATE_CLOSING, 0);
    }

    #[test]
    fn rst_closes_and_lifetimes_follow_state() {
        let cfg = Config::default();
        assert_eq!(lifetime_s(&cfg, PROTO_TCP, 0), cfg.tcp_syn_timeout_s);
        let est = tcp_next(0, TCP_ACK, true);
        assert_eq!(
            lifetime_s(&cfg, PROTO_TCP, est),
            cfg.tcp_established_timeout_s
        );
        let rst = tcp_next(est, TCP_RST, false);
        assert_eq!(lifetime_s(&cfg, PROTO_TCP, rst), cfg.tcp_closing_timeout_s);
        assert_eq!(lifetime_s(&cfg, PROTO_UDP, rst), cfg.udp_timeout_s);
        assert_eq!(lifetime_s(&cfg, PROTO_UDP, 0), cfg.udp_unreplied_timeout_s);
    }
}
