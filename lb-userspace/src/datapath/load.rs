use std::path::Path;

use anyhow::{Context, Result};
use aya::{
    programs::{xdp::XdpLinkId, Xdp, XdpMode as AyaMode},
    Ebpf, EbpfLoader,
};
use lb_common::names;

use super::Maps;

/// The XDP object built by `cargo xtask build-ebpf` (see build.rs).
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(env!("LB_EBPF_OBJECT"));
/// Name of the load-balancer program in the object.
pub const PROGRAM: &str = "lb";

/// Map sizes chosen at load time; the object's own sizes are the defaults.
#[derive(Clone, Debug)]
pub struct Capacities {
    pub addrs: u32,
    pub frontends: u32,
    pub backends: u32,
    pub maglev_slots: u32,
    pub ct: u32,
    pub services: u32,
}

impl Default for Capacities {
    fn default() -> Self {
        Self {
            addrs: lb_common::MAX_ADDRS,
            frontends: lb_common::MAX_FRONTENDS,
            backends: lb_common::MAX_BACKENDS,
            maglev_slots: lb_common::MAX_MAGLEV_SLOTS,
            ct: lb_common::MAX_CT,
            services: lb_common::MAX_SERVICES,
        }
    }
}

impl Capacities {
    /// Enough for tests, without preallocating the production sizes per test.
    pub fn small() -> Self {
        Self {
            addrs: 4096,
            frontends: 4096,
            backends: 4096,
            maglev_slots: 1 << 20,
            ct: 65_536,
            services: 4096,
        }
    }
}

/// How the program is attached to an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum XdpMode {
    /// Native (driver) mode, falling back to generic when the driver has none.
    Auto,
    /// Driver mode only; fail where the driver has no XDP support.
    Native,
    /// The kernel's generic (skb) mode: works on any device, slower.
    Generic,
}

pub struct Datapath {
    pub ebpf: Ebpf,
    pub maps: Maps,
    /// `None` when the kernel refused the IPv6 path.
    _path_v6: Option<super::path_v6::Slots>,
}

/// The errno at the bottom of `e`'s chain, if any.
fn os_error(e: &(dyn std::error::Error + 'static)) -> Option<i32> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return io.raw_os_error();
        }
        cur = err.source();
    }
    None
}

impl Datapath {
    /// Loads the object, the `lb` and `noop` programs, the tc programs of
    /// `tc.rs` and the socket programs of `cgroup.rs` into the kernel.
    /// With `pin_dir`, every map is pinned there by name and reused if it
    /// already exists, so state outlives this process.
    pub fn load(caps: &Capacities, pin_dir: Option<&Path>) -> Result<Self> {
        let mut loader = EbpfLoader::new();
        loader
            .map_max_entries(names::ADDRS_V4, caps.addrs)
            .map_max_entries(names::ADDRS_V6, caps.addrs)
            .map_max_entries(names::FRONTENDS_V4, caps.frontends)
            .map_max_entries(names::BACKENDS_V4, caps.backends)
            .map_max_entries(names::MAGLEV_SLOTS, caps.maglev_slots)
            .map_max_entries(names::CT_V4, caps.ct)
            .map_max_entries(names::SVC_STATS, caps.services)
            .map_max_entries(names::SVC_NAMES, caps.services);
        if let Some(dir) = pin_dir {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            for name in names::ALL {
                loader.map_pin_path(name, dir.join(name));
            }
            // Maps whose shape follows the code and whose contents the agent
            // can do without: the path counters (sized by the list of
            // reasons, so they restart from zero when it grows) and the
            // settings (rewritten at every start). A pinned one of another
            // shape would leave new reasons uncounted, or fail the verifier.
            let shapes = [
                (names::STATS, lb_common::Reason::COUNT, 8),
                (
                    names::CONFIG,
                    1,
                    std::mem::size_of::<lb_common::Config>() as u32,
                ),
            ];
            for (name, entries, value_size) in shapes {
                let pin = dir.join(name);
                let Ok(info) = aya::maps::MapInfo::from_pin(&pin) else {
                    continue;
                };
                if (info.max_entries(), info.value_size()) != (entries, value_size) {
                    tracing::info!(
                        map = name,
                        from = ?(info.max_entries(), info.value_size()),
                        to = ?(entries, value_size),
                        "pinned map reshaped; it starts empty"
                    );
                    std::fs::remove_file(&pin)
                        .with_context(|| format!("removing {}", pin.display()))?;
                }
            }
            for name in names::RETIRED {
                match std::fs::remove_file(dir.join(name)) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        tracing::warn!(%name, "cannot remove retired pin: {e}")
                    }
                    _ => {}
                }
            }
        }
        let mut ebpf = loader
            .load(OBJECT)
            .context("loading the XDP object (needs root or CAP_BPF, and a kernel with BTF)")?;
        for name in [PROGRAM, "noop"] {
            let prog: &mut Xdp = ebpf
                .program_mut(name)
                .with_context(|| format!("program {name} missing from the object"))?
                .try_into()?;
            prog.load()
                .with_context(|| format!("verifier rejected {name}"))?;
        }
        super::tc::load(&mut ebpf)?;
        let path_v6 = super::path_v6::load(&mut ebpf)
            .inspect_err(|e| {
                tracing::warn!("IPv6 packet path not loaded, IPv6 packets pass untranslated: {e:#}")
            })
            .ok();
        // Host-network clients are an addition: a kernel without the socket
        // hooks (before 5.18) still gets the packet path.
        if let Err(e) = super::cgroup::load(&mut ebpf) {
            tracing::warn!("socket programs not loaded, host processes reach no Service: {e:#}");
        }
        let maps = Maps::take(&mut ebpf)?;
        Ok(Self {
            ebpf,
            maps,
            _path_v6: path_v6,
        })
    }

    /// Whether the kernel took the IPv6 packet path.
    pub fn has_ipv6_path(&self) -> bool {
        self._path_v6.is_some()
    }

    pub fn program(&self, name: &str) -> Result<&Xdp> {
        Ok(self
            .ebpf
            .program(name)
            .with_context(|| format!("no program {name}"))?
            .try_into()?)
    }

    /// One of the tc programs (`tc.rs`).
    pub fn classifier(&self, name: &str) -> Result<&aya::programs::SchedClassifier> {
        Ok(self
            .ebpf
            .program(name)
            .with_context(|| format!("no program {name}"))?
            .try_into()?)
    }

    pub fn program_mut(&mut self, name: &str) -> Result<&mut Xdp> {
        Ok(self
            .ebpf
            .program_mut(name)
            .with_context(|| format!("no program {name}"))?
            .try_into()?)
    }

    /// Attaches `lb` to `ifname` in the calling thread's network namespace.
    /// The link lives as long as this `Datapath`.
    pub fn attach(&mut self, ifname: &str, mode: XdpMode) -> Result<XdpLinkId> {
        let prog = self.program_mut(PROGRAM)?;
        let flags = match mode {
            XdpMode::Generic => AyaMode::Skb,
            XdpMode::Native | XdpMode::Auto => AyaMode::Driver,
        };
        match prog.attach(ifname, flags) {
            Ok(id) => Ok(id),
            // Generic mode would fail the same way, and "native XDP
            // unavailable" would send the operator after the wrong cause.
            Err(e) if os_error(&e) == Some(libc::EEXIST) || os_error(&e) == Some(libc::EBUSY) => {
                Err(e).with_context(|| {
                    format!(
                        "attaching XDP to {ifname}: another XDP program holds it (a link pinned by another agent or tool; `xdplb agent --cleanup` removes ours)"
                    )
                })
            }
            Err(e) if mode == XdpMode::Auto => {
                tracing::warn!(%ifname, "native XDP unavailable ({e}), using generic mode");
                prog.attach(ifname, AyaMode::Skb)
                    .with_context(|| format!("attaching XDP to {ifname}"))
            }
            Err(e) => Err(e).with_context(|| format!("attaching XDP ({mode:?}) to {ifname}")),
        }
    }
}
