//! What XDP leaves in front of a frame it passes for the tc program on the
//! same interface to deliver (`bpf_xdp_adjust_meta`, read at tc as the skb's
//! `data_meta`). XDP cannot send a frame to a device whose receiver takes no
//! XDP frames (a veth whose peer runs no XDP program), and the kernel's
//! input path would drop what it passes as a martian (the node's own address
//! as source) or by reverse-path filtering (a VIP as source); tc can send
//! the skb the kernel built from the frame.

/// Host byte order, as both programs run on the same CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XdpMeta {
    /// `META_MAGIC` with the `FWD_*` kind in the low byte.
    pub magic: u32,
    /// Where tc sends the skb.
    pub ifindex: u32,
}

/// Tells an `XdpMeta` from whatever else might sit in front of a frame.
pub const META_MAGIC: u32 = 0x7864_6c00;

impl XdpMeta {
    pub const fn new(kind: u8, ifindex: u32) -> Self {
        Self {
            magic: META_MAGIC | kind as u32,
            ifindex,
        }
    }

    /// The kind, if this is ours.
    pub const fn kind(&self) -> Option<u8> {
        if self.magic & !0xff == META_MAGIC {
            Some(self.magic as u8)
        } else {
            None
        }
    }
}

const _: () = assert!(core::mem::size_of::<XdpMeta>() == 8);
