//! Whole hash maps read with BPF_MAP_LOOKUP_BATCH (5.6): a few thousand
//! entries per system call, where aya 0.14's iterator, which has no batch
//! call, makes two per entry. `xdplb flows` reads connection tracking this
//! way, which holds half a million entries by default.
use std::{
    io,
    mem::size_of,
    os::fd::{AsFd, AsRawFd},
};

use anyhow::{Context, Result};
use aya::{maps::MapData, Pod};

/// linux/bpf.h.
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
/// Entries asked for per call.
const CHUNK: usize = 4096;

/// The batch part of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Every entry of the hash map `map`. Entries added or removed meanwhile
/// may be missed or seen, as with any walk of a live map.
pub fn lookup_all<K: Pod, V: Pod>(map: &MapData) -> Result<Vec<(K, V)>> {
    let fd = map.fd().as_fd().as_raw_fd();
    let mut out = Vec::new();
    // The kernel's cursor: a bucket index for hash maps, opaque here.
    let (mut cursor, mut next) = (0u64, 0u64);
    let mut first = true;
    let mut chunk = CHUNK;
    loop {
        // SAFETY: `Pod` types are valid for any bit pattern, zeros included.
        let (mut keys, mut values) = unsafe {
            (
                vec![std::mem::zeroed::<K>(); chunk],
                vec![std::mem::zeroed::<V>(); chunk],
            )
        };
        let mut attr = BatchAttr {
            in_batch: if first {
                0
            } else {
                &cursor as *const u64 as u64
            },
            out_batch: &mut next as *mut u64 as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: chunk as u32,
            map_fd: fd as u32,
            ..BatchAttr::default()
        };
        // SAFETY: bpf(2) with an attribute whose pointers reach buffers of
        // `count` keys and values, and the cursor, all alive for the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &mut attr as *mut BatchAttr,
                size_of::<BatchAttr>(),
            )
        };
        let err = (rc < 0).then(io::Error::last_os_error);
        match err.as_ref().and_then(io::Error::raw_os_error) {
            // A bucket holds more entries than asked for: ask for more.
            Some(libc::ENOSPC) => {
                chunk *= 2;
                continue;
            }
            Some(libc::ENOENT) | None => {}
            Some(_) => {
                return Err(err.expect("an error")).context("BPF_MAP_LOOKUP_BATCH");
            }
        }
        let n = attr.count as usize;
        out.extend(keys.into_iter().zip(values).take(n));
        if err.is_some() {
            return Ok(out);
        }
        cursor = next;
        first = false;
    }
}
