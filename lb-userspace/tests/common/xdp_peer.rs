//! An XDP program that passes every frame, attached in driver mode to a
//! veth: what makes its peer take XDP frames, as a NIC does. Loaded with
//! two raw instructions through bpf(2) rather than from the product's
//! object, whose maps (megabytes of preallocated conntrack) a stand-in for
//! the network's side has no use for.
#![allow(dead_code)] // each test binary uses a different subset
use std::{
    io,
    os::fd::{FromRawFd, OwnedFd},
};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_XDP: u32 = 37;

/// The attachment lasts as long as this value.
pub struct XdpPass {
    _link: OwnedFd,
    _prog: OwnedFd,
}

fn bpf(cmd: libc::c_long, attr: &mut [u8]) -> io::Result<OwnedFd> {
    // SAFETY: `attr` is a zero-padded bpf_attr of the size passed, whose
    // pointers point at data that outlives the call.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len()) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor bpf(2) just returned, owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Attaches an XDP_PASS program to `ifindex` of the calling thread's network
/// namespace, in driver mode.
pub fn attach(ifindex: u32) -> io::Result<XdpPass> {
    // r0 = XDP_PASS (2); exit.
    let insns: [u8; 16] = [0xb7, 0, 0, 0, 2, 0, 0, 0, 0x95, 0, 0, 0, 0, 0, 0, 0];
    let license = b"GPL\0";
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&BPF_PROG_TYPE_XDP.to_ne_bytes());
    attr[4..8].copy_from_slice(&2u32.to_ne_bytes());
    attr[8..16].copy_from_slice(&(insns.as_ptr() as u64).to_ne_bytes());
    attr[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
    // expected_attach_type, after log, kern_version, prog_flags, prog_name
    // and prog_ifindex.
    attr[68..72].copy_from_slice(&BPF_XDP.to_ne_bytes());
    let prog = bpf(BPF_PROG_LOAD, &mut attr)?;
    let mut attr = [0u8; 64];
    attr[0..4].copy_from_slice(&(std::os::fd::AsRawFd::as_raw_fd(&prog) as u32).to_ne_bytes());
    attr[4..8].copy_from_slice(&ifindex.to_ne_bytes());
    attr[8..12].copy_from_slice(&BPF_XDP.to_ne_bytes());
    let link = bpf(BPF_LINK_CREATE, &mut attr)?;
    Ok(XdpPass {
        _link: link,
        _prog: prog,
    })
}
