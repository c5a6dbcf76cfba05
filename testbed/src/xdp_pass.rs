//! An XDP program that passes every frame, attached in driver mode to a
//! veth: its peer then takes XDP frames, as a NIC does, so the agent serves
//! that peer with XDP. Tests and `cargo xtask e2e` (which includes this
//! file, having no BPF loader of its own) put it on the network's side of a
//! node's uplink. Two raw instructions through bpf(2), because the
//! product's object would bring megabytes of maps for nothing. std and
//! libc only.
use std::{
    ffi::CString,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::Path,
};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_XDP: u32 = 37;

/// The attachment: it lasts as long as this value, or its pin.
pub struct XdpPass {
    link: OwnedFd,
    _prog: OwnedFd,
}

fn bpf(cmd: libc::c_long, attr: &mut [u8]) -> io::Result<i64> {
    // SAFETY: `attr` is a zero-padded bpf_attr of the size passed, whose
    // pointers point at data that outlives the call.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len()) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc)
}

/// For the commands that return a new descriptor.
fn bpf_fd(cmd: libc::c_long, attr: &mut [u8]) -> io::Result<OwnedFd> {
    let fd = bpf(cmd, attr)?;
    // SAFETY: a descriptor bpf(2) just returned, owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Attaches the program to `ifname` in the calling thread's network
/// namespace.
pub fn attach(ifname: &str) -> io::Result<XdpPass> {
    let name = CString::new(ifname)?;
    // SAFETY: a NUL-terminated name.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if ifindex == 0 {
        return Err(io::Error::last_os_error());
    }
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
    let prog = bpf_fd(BPF_PROG_LOAD, &mut attr)?;
    let mut attr = [0u8; 64];
    attr[0..4].copy_from_slice(&(prog.as_raw_fd() as u32).to_ne_bytes());
    attr[4..8].copy_from_slice(&ifindex.to_ne_bytes());
    attr[8..12].copy_from_slice(&BPF_XDP.to_ne_bytes());
    let link = bpf_fd(BPF_LINK_CREATE, &mut attr)?;
    Ok(XdpPass { link, _prog: prog })
}

impl XdpPass {
    /// Pins the link at `path` on a bpffs, so it outlives this value.
    pub fn pin(&self, path: &Path) -> io::Result<()> {
        let path = CString::new(path.as_os_str().as_encoded_bytes())?;
        let mut attr = [0u8; 64];
        attr[0..8].copy_from_slice(&(path.as_ptr() as u64).to_ne_bytes());
        attr[8..12].copy_from_slice(&(self.link.as_raw_fd() as u32).to_ne_bytes());
        bpf(BPF_OBJ_PIN, &mut attr).map(drop)
    }
}
