//! The map writes the agent makes besides the Services': the data plane's
//! settings, how it delivers to each interface, the deletion of flows
//! and affinities whose backend is gone (`stale::forget` picks them), and
//! the LoadBalancer addresses this node announces.
use std::collections::BTreeMap;

use anyhow::Result;
use lb_common::{
    AffinityValue, AnnounceKeyV6, AnnounceValue, Config, ConfigV6, CtKeyV4, CtKeyV6, CtValueV4,
    CtValueV6, IfaceInfo, LbAddrInfo,
};

pub trait NodeMaps {
    /// Sets `CONFIG`, which every packet reads.
    fn put_config(&mut self, config: Config) -> Result<()>;
    /// Sets `CONFIG_V6`, the IPv6 path's settings.
    fn put_config_v6(&mut self, config: ConfigV6) -> Result<()>;
    /// Sets how the packet path delivers to interface `index` (`IFACES`).
    fn put_iface(&mut self, index: u32, info: IfaceInfo) -> Result<()>;
    /// Deletes the connection-tracking entries `stale` picks, and any copy
    /// the packet path cached of them; returns the keys it deleted (not
    /// those the LRU evicted meanwhile).
    fn remove_flows(
        &mut self,
        stale: &dyn Fn(&CtKeyV4, &CtValueV4) -> bool,
    ) -> Result<Vec<CtKeyV4>>;
    /// `remove_flows` for IPv6 flows (`CT_V6`).
    fn remove_flows_v6(
        &mut self,
        stale: &dyn Fn(&CtKeyV6, &CtValueV6) -> bool,
    ) -> Result<Vec<CtKeyV6>>;
    /// Deletes the affinity entries, of clients and of sockets alike and of
    /// both families, whose value `stale` picks; returns how many it deleted.
    fn remove_affinities(&mut self, stale: &dyn Fn(&AffinityValue) -> bool) -> Result<usize>;
    /// Makes `ANNOUNCE_V4` hold exactly `want`, by (address, ifindex) in
    /// network order: the addresses this node answers ARP for.
    fn set_announced(&mut self, want: &BTreeMap<(u32, u32), AnnounceValue>) -> Result<()>;
    /// Makes `LB_ADDRS_V4` hold exactly `want`: every pool address, for
    /// inspection.
    fn set_lb_addrs(&mut self, want: &BTreeMap<u32, LbAddrInfo>) -> Result<()>;
    /// `set_announced` for `ANNOUNCE_V6`: the addresses this node answers
    /// Neighbour Solicitations for.
    fn set_announced_v6(&mut self, want: &BTreeMap<AnnounceKeyV6, AnnounceValue>) -> Result<()>;
    /// `set_lb_addrs` for `LB_ADDRS_V6`.
    fn set_lb_addrs_v6(&mut self, want: &BTreeMap<[u32; 4], LbAddrInfo>) -> Result<()>;
}
