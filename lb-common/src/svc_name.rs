//! The one encoding of a Service port's name, "namespace/name:port/PROTO",
//! as `SVC_NAMES` stores it: the agent writes it, a restarted agent reads
//! its Service ids back by it, and metrics and the CLI label counters with
//! its parts. None of the parts can hold '/' or ':' (DNS labels and IANA
//! service names), so the split is unambiguous.

/// Bytes of an encoded name: the longest Kubernetes allows (namespace 63,
/// name 63, port name 15, protocol 4, three separators: 148) fits.
pub const SVC_NAME_LEN: usize = 160;

/// Value of `SVC_NAMES`, keyed by service id: the encoded name, zero-padded.
/// Only the agent and the CLI read it; `bpftool map dump` shows it as text.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SvcName {
    pub name: [u8; SVC_NAME_LEN],
}

/// A Service port's name, in parts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SvcNameParts<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    /// The port's name, "" when unnamed.
    pub port: &'a str,
    pub protocol: &'a str,
}

impl<'a> SvcNameParts<'a> {
    /// Reads "namespace/name:port/PROTO"; `None` when it is not one.
    pub fn parse(s: &'a str) -> Option<Self> {
        let (namespace, rest) = s.split_once('/')?;
        let (name_port, protocol) = rest.rsplit_once('/')?;
        let (name, port) = name_port.split_once(':')?;
        let parts = Self {
            namespace,
            name,
            port,
            protocol,
        };
        parts.valid().then_some(parts)
    }

    fn valid(&self) -> bool {
        let clean = |p: &str| !p.contains(['/', ':']);
        !self.namespace.is_empty()
            && !self.name.is_empty()
            && !self.protocol.is_empty()
            && [self.namespace, self.name, self.port, self.protocol]
                .iter()
                .all(|p| clean(p))
    }

    fn encoded_len(&self) -> usize {
        self.namespace.len() + self.name.len() + self.port.len() + self.protocol.len() + 3
    }
}

impl SvcName {
    /// Encodes `parts`; `None` when a part holds a separator or is empty
    /// where it may not be, or the whole does not fit.
    pub fn encode(parts: &SvcNameParts) -> Option<Self> {
        if !parts.valid() || parts.encoded_len() > SVC_NAME_LEN {
            return None;
        }
        let mut out = Self {
            name: [0; SVC_NAME_LEN],
        };
        let mut at = 0;
        for (piece, sep) in [
            (parts.namespace, Some(b'/')),
            (parts.name, Some(b':')),
            (parts.port, Some(b'/')),
            (parts.protocol, None),
        ] {
            out.name[at..at + piece.len()].copy_from_slice(piece.as_bytes());
            at += piece.len();
            if let Some(sep) = sep {
                out.name[at] = sep;
                at += 1;
            }
        }
        Some(out)
    }

    /// The encoded text, up to the first zero byte; `None` if not UTF-8.
    pub fn as_str(&self) -> Option<&str> {
        let end = self
            .name
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(SVC_NAME_LEN);
        core::str::from_utf8(&self.name[..end]).ok()
    }

    pub fn parts(&self) -> Option<SvcNameParts<'_>> {
        SvcNameParts::parse(self.as_str()?)
    }
}

const _: () = assert!(core::mem::size_of::<SvcName>() == SVC_NAME_LEN);

#[cfg(feature = "user")]
// SAFETY: repr(C), Copy, a byte array: no padding, no invalid bit patterns.
unsafe impl aya::Pod for SvcName {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_the_longest_names_kubernetes_allows() {
        let ns = "n".repeat(63);
        let name = "s".repeat(63);
        let port = "p".repeat(15);
        let parts = SvcNameParts {
            namespace: &ns,
            name: &name,
            port: &port,
            protocol: "SCTP",
        };
        let encoded = SvcName::encode(&parts).unwrap();
        assert_eq!(encoded.parts(), Some(parts));
        assert_eq!(encoded.as_str().unwrap().len(), 148);
    }

    #[test]
    fn unnamed_ports_and_bad_input() {
        let p = SvcNameParts::parse("default/web:/TCP").unwrap();
        assert_eq!(
            (p.namespace, p.name, p.port, p.protocol),
            ("default", "web", "", "TCP")
        );
        for bad in [
            "",
            "web",
            "default/web/TCP",
            "/web:/TCP",
            "default/:/TCP",
            "a/b:c:d/TCP",
        ] {
            assert_eq!(SvcNameParts::parse(bad), None, "{bad:?}");
        }
        let with_sep = SvcNameParts {
            namespace: "a/b",
            ..p
        };
        assert_eq!(SvcName::encode(&with_sep), None);
    }
}
