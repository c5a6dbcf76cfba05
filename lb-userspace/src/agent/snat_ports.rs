//! The source NAT ports of this node: every unprivileged port outside the
//! ephemeral range its own sockets connect from (`lb_common::snat`).
use anyhow::{bail, Context, Result};
use lb_common::snat::SnatPorts;

/// Governs both families' ephemeral ports.
const EPHEMERAL_RANGE: &str = "/proc/sys/net/ipv4/ip_local_port_range";

/// Read where the agent runs: in the node's network namespace. A range that
/// cannot be read or leaves too few ports is logged, and the ports below
/// the NodePort range are used.
pub fn of_this_node() -> SnatPorts {
    let range = std::fs::read_to_string(EPHEMERAL_RANGE)
        .with_context(|| format!("reading {EPHEMERAL_RANGE}"))
        .and_then(|text| parse(&text));
    match range {
        Ok((first, last)) => match SnatPorts::outside(first, last) {
            Some(ports) => {
                tracing::info!(
                    ephemeral = format!("{first}-{last}"),
                    ports = ports.count(),
                    "source NAT ports: every port from 1024 outside the node's ephemeral range"
                );
                ports
            }
            None => {
                tracing::warn!(
                    ephemeral = format!("{first}-{last}"),
                    "the node's ephemeral range leaves too few ports for source NAT: using \
                     1024-29999, which the node's own connections to backends may also use"
                );
                SnatPorts::BELOW_NODEPORTS
            }
        },
        Err(e) => {
            tracing::warn!("{e:#}: source NAT uses ports 1024-29999");
            SnatPorts::BELOW_NODEPORTS
        }
    }
}

fn parse(text: &str) -> Result<(u16, u16)> {
    let mut fields = text.split_whitespace().map(str::parse::<u16>);
    match (fields.next(), fields.next(), fields.next()) {
        (Some(Ok(first)), Some(Ok(last)), None) if first <= last => Ok((first, last)),
        _ => bail!("{EPHEMERAL_RANGE} holds {text:?}, not two ports"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernels_format_parses() {
        assert_eq!(parse("32768\t60999\n").unwrap(), (32_768, 60_999));
    }

    #[test]
    fn anything_else_is_refused() {
        for text in [
            "",
            "32768",
            "32768 60999 1",
            "60999 32768",
            "a b",
            "1 70000",
        ] {
            assert!(parse(text).is_err(), "{text:?}");
        }
    }
}
