//! What shows that an xdplb cell took the path its row names: node1's
//! agent, where every row's traffic is translated, counted the packets at
//! the row's frontend, and its socket hooks saw the sender's sockets in the
//! socket-hook row and no other. What it dropped, and why, is told.
use std::{collections::BTreeMap, net::SocketAddr, path::Path};

use anyhow::{ensure, Result};

use super::{Row, Traffic};
use ::testbed::{apps, cluster::Run, lb_pool};

/// What the socket hooks count for a pod's socket that addresses a
/// frontend: translated at connect, or UDP left to the per-packet path.
const HOOK_REASONS: [&str; 2] = ["socket_translated", "socket_udp_left_to_packet_path"];

pub struct Counters {
    frontend: String,
    packets: u64,
    /// `xdplb stats`: packets by reason.
    reasons: BTreeMap<String, u64>,
}

impl Counters {
    pub fn read(bin: &Path, run: &Run, node: &str, frontend: SocketAddr) -> Result<Self> {
        let frontend = format!("{frontend}/UDP");
        let packets = lb_pool::frontend_packets(bin, run, node, &frontend)?;
        let pin = run.pin_path(node);
        let stats = apps::xdplb(bin, &["stats", "--pin-path", apps::path_str(&pin)?])?;
        let reasons = stats
            .lines()
            .skip(1)
            .filter_map(|line| {
                let mut words = line.split_whitespace();
                Some((words.next()?.to_owned(), words.next()?.parse().ok()?))
            })
            .collect();
        Ok(Self {
            frontend,
            packets,
            reasons,
        })
    }

    /// How much each reason grew from `self` to `after`.
    fn growth<'a>(&'a self, after: &'a Self) -> impl Iterator<Item = (&'a str, u64)> {
        after.reasons.iter().map(|(reason, n)| {
            let before = self.reasons.get(reason).copied().unwrap_or(0);
            (reason.as_str(), n.saturating_sub(before))
        })
    }

    /// Fails unless the frontend's Service counted at least the `received`
    /// packets between `self` and `after`, and the socket hooks saw
    /// sockets exactly in the hooks row; says what it found.
    pub fn check(&self, after: &Self, row: Row, received: u64) -> Result<String> {
        let packets = after.packets.saturating_sub(self.packets);
        let hooks: u64 = self
            .growth(after)
            .filter(|(reason, _)| HOOK_REASONS.contains(reason))
            .map(|(_, n)| n)
            .sum();
        let counted = |prefix: &str| -> String {
            let seen: Vec<String> = self
                .growth(after)
                .filter(|(reason, n)| reason.starts_with(prefix) && *n > 0)
                .map(|(reason, n)| format!("{reason} {n}"))
                .collect();
            if seen.is_empty() {
                "none".to_owned()
            } else {
                seen.join(", ")
            }
        };
        ensure!(
            packets >= received,
            "xdplb on node1 counted {packets} packets to {} while the sink received {received}: \
             the traffic did not take its path",
            self.frontend
        );
        let hooks_row = row.traffic == Traffic::EastWestHooks;
        ensure!(
            (hooks > 0) == hooks_row,
            "the socket hooks on node1 counted {hooks} sockets {} row",
            if hooks_row {
                "in the hooks"
            } else {
                "outside the hooks"
            }
        );
        // How the translated packets left tells whether the cell measured
        // the redirect past the node's stack or the kernel's forwarding.
        Ok(format!(
            "node1's agent counted {packets} packets at {} (the sink received {received}), \
             its socket hooks {hooks} sockets; sent on: {}; drops: {}",
            self.frontend,
            counted("fwd_"),
            counted("drop_"),
        ))
    }
}
