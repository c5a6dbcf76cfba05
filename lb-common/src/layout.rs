//! The layouts of what the data plane pins, checked against the file of
//! their `LAYOUT_VERSION`: a pinned map outlives the program that made it,
//! so a changed layout must come with a new version (new pins, see
//! `LAYOUT_VERSION`) rather than have a new program read old bytes. Test
//! only.

/// One line per type: its name and size, then each field at its offset.
macro_rules! layouts {
    ($($ty:path { $($field:ident),* $(,)? })*) => {
        [$(
            format!(
                "{} {}:{}",
                stringify!($ty).rsplit(':').next().unwrap_or_default().trim(),
                core::mem::size_of::<$ty>(),
                [$(format!(" {}@{}", stringify!($field), core::mem::offset_of!($ty, $field))),*]
                    .concat()
            ),
        )*]
        .join("\n")
    };
}

/// Every struct a pinned map holds, field by field: a field added, moved,
/// resized or renamed shows.
fn current() -> String {
    layouts! {
        crate::AddrInfo { flags }
        crate::FrontendKeyV4 { addr, port, proto, _pad }
        crate::FrontendValue { svc_id, ring_offset, ring_size, flags, affinity_timeout_s, _pad }
        crate::BackendV4 { addr, port, flags }
        crate::CtKeyV4 { src_addr, dst_addr, src_port, dst_port, proto, dir, _pad }
        crate::CtValueV4 { expires_ns, last_seen_ns, nat_addr, nat_port, state, fwd_kind, svc_id, fwd_ifindex, fwd_smac, fwd_dmac, snat_port, csum_addrs, snat_addr, csum_l4, csum_pseudo }
        crate::SvcStats { packets, bytes }
        crate::Config { tcp_established_timeout_s, tcp_syn_timeout_s, tcp_closing_timeout_s, udp_timeout_s, snat_addr, snat_ports, udp_unreplied_timeout_s, host_netns_cookie }
        crate::snat::SnatPorts { min, max, skip_from, skip_len }
        crate::IfaceInfo { flags }
        crate::SvcName { name }
        crate::AffinityKeyV4 { frontend, client_addr }
        crate::AffinityValue { last_seen_ns, backend_id, _pad }
        crate::SourceRangeKeyV4 { svc_id_be, addr }
        crate::FragKeyV4 { src_addr, dst_addr, id, proto, _pad }
        crate::FragValueV4 { src_addr, dst_addr }
        crate::FragKeyV6 { src_addr, dst_addr, id, proto, _pad }
        crate::FragValueV6 { src_addr, dst_addr }
        crate::sock::SockRevNatKeyV4 { cookie, backend_addr, backend_port, _pad }
        crate::sock::SockRevNatValueV4 { frontend_addr, frontend_port, _pad }
        crate::sock::SockAffinityKeyV4 { frontend, netns_cookie }
        crate::FrontendKeyV6 { addr, port, proto, _pad }
        crate::BackendV6 { addr, port, flags }
        crate::sock::SockRevNatKeyV6 { cookie, backend_addr, backend_port, _pad }
        crate::sock::SockRevNatValueV6 { frontend_addr, frontend_port, _pad }
        crate::sock::SockAffinityKeyV6 { frontend, _pad, netns_cookie }
        crate::CtKeyV6 { src_addr, dst_addr, src_port, dst_port, proto, dir, _pad }
        crate::CtValueV6 { expires_ns, last_seen_ns, nat_addr, snat_addr, nat_port, snat_port, state, fwd_kind, csum_addrs, svc_id, fwd_ifindex, fwd_smac, fwd_dmac, csum_l4, csum_pseudo }
        crate::ConfigV6 { snat_addr, pods_udp_per_packet, _pad }
        crate::SourceRangeKeyV6 { svc_id_be, addr }
        crate::AffinityKeyV6 { frontend, client_addr }
        crate::AnnounceKeyV4 { addr, ifindex }
        crate::AnnounceValue { mac, _pad }
        crate::LbAddrInfo { pool, node }
        crate::AnnounceKeyV6 { addr, ifindex }
    }
}

/// The pinned layouts must be those recorded for `LAYOUT_VERSION`. A
/// missing record is written when `XDPLB_WRITE_LAYOUT` is set, so a new
/// version records its layouts once; a changed one never is.
#[test]
fn pinned_layouts_are_those_of_their_version() {
    let path = format!(
        "{}/layouts/v{}.txt",
        env!("CARGO_MANIFEST_DIR"),
        crate::LAYOUT_VERSION
    );
    let now = current() + "\n";
    match std::fs::read_to_string(&path) {
        Ok(recorded) => assert!(
            recorded == now,
            "the layout of a pinned map changed while LAYOUT_VERSION stayed {}: bump it, \
             then record the new layouts with XDPLB_WRITE_LAYOUT=1 cargo test -p lb-common \
             layout\n--- recorded ({path}) ---\n{recorded}--- now ---\n{now}",
            crate::LAYOUT_VERSION
        ),
        Err(_) if std::env::var_os("XDPLB_WRITE_LAYOUT").is_some() => {
            std::fs::write(&path, now).expect("recording the layouts")
        }
        Err(e) => panic!(
            "no layouts recorded for LAYOUT_VERSION {} ({path}: {e}): record them with \
             XDPLB_WRITE_LAYOUT=1 cargo test -p lb-common layout",
            crate::LAYOUT_VERSION
        ),
    }
}
