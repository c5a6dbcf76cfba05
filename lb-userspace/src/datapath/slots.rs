//! `MAGLEV_SLOTS` mapped into this process. aya has no batch update, and a
//! syscall per slot would make a cold sync of 10,000 services take tens of
//! seconds; the map is `BPF_F_MMAPABLE`, so rings are written to memory.
//! The kernel lays array elements out 8 bytes apart (`elem_size` is the
//! value size rounded up to 8), so each u32 slot sits in its own u64.
use std::os::fd::{AsFd, AsRawFd};

use anyhow::{bail, Context, Result};
use aya::maps::{Map, MapData};

pub struct RingSlots {
    ptr: *mut u64,
    len: usize,
}

// SAFETY: the mapping is plain shared memory owned by this value.
unsafe impl Send for RingSlots {}

impl RingSlots {
    pub fn map(map: &Map) -> Result<Self> {
        let Map::Array(data) = map else {
            bail!("MAGLEV_SLOTS is not an array map");
        };
        Self::map_data(data)
    }

    fn map_data(data: &MapData) -> Result<Self> {
        let len = data.info()?.max_entries() as usize;
        let bytes = (len * 8).next_multiple_of(4096);
        // SAFETY: a shared mapping of a BPF_F_MMAPABLE array of `len` 8-byte elements.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                data.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error()).context("mmap of MAGLEV_SLOTS");
        }
        Ok(Self {
            ptr: ptr.cast(),
            len,
        })
    }

    pub fn len(&self) -> u32 {
        self.len as u32
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn write(&mut self, offset: u32, slots: &[u32]) -> Result<()> {
        let end = offset as usize + slots.len();
        if end > self.len {
            bail!(
                "ring {offset}+{} beyond MAGLEV_SLOTS ({})",
                slots.len(),
                self.len
            );
        }
        for (i, &slot) in slots.iter().enumerate() {
            // SAFETY: bounds checked above; the kernel reads these slots only
            // after a frontend is published pointing at them.
            unsafe { self.ptr.add(offset as usize + i).write(u64::from(slot)) };
        }
        Ok(())
    }

    pub fn read(&self, offset: u32, len: u32) -> Result<Vec<u32>> {
        let end = offset as usize + len as usize;
        if end > self.len {
            bail!("ring {offset}+{len} beyond MAGLEV_SLOTS ({})", self.len);
        }
        // SAFETY: bounds checked above.
        let words =
            unsafe { std::slice::from_raw_parts(self.ptr.add(offset as usize), len as usize) };
        Ok(words.iter().map(|&w| w as u32).collect())
    }
}

impl Drop for RingSlots {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `map_data` mapped.
        unsafe { libc::munmap(self.ptr.cast(), (self.len * 8).next_multiple_of(4096)) };
    }
}
