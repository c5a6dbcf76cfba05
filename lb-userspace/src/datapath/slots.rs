//! `MAGLEV_SLOTS` mapped into this process. aya has no batch update, and a
//! syscall per slot would make a cold sync of 10,000 services take tens of
//! seconds; the map is `BPF_F_MMAPABLE`, so rings are written to memory.
//! The kernel lays array elements out 8 bytes apart (`elem_size` is the
//! value size rounded up to 8), so each u32 slot sits in its own u64.
//!
//! The kernel maps every page of the array at mmap time, so each mapping
//! adds the whole array (128 MiB at the default size) to the process's RSS,
//! though the pages are the map's own and counted once by the kernel. Hence
//! one mapping per process, shared by its handles.
use std::{
    os::fd::{AsFd, AsRawFd},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use anyhow::{bail, Context, Result};
use aya::maps::{Map, MapData};

/// The syncer's handle on the rings, the one that writes them.
pub struct RingSlots {
    view: SlotsView,
}

/// The rings read-only, as inspection and the metrics server read them
/// beside the syncer.
#[derive(Clone)]
pub struct SlotsView {
    mapping: Arc<Mapping>,
}

struct Mapping {
    ptr: *mut u64,
    len: usize,
}

// SAFETY: the mapping is plain shared memory, unmapped only when its last
// handle goes, and every access to it is atomic.
unsafe impl Send for Mapping {}
unsafe impl Sync for Mapping {}

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
            view: SlotsView {
                mapping: Arc::new(Mapping {
                    ptr: ptr.cast(),
                    len,
                }),
            },
        })
    }

    /// A writer over `view`'s mapping, for [`super::MapsReader`] only:
    /// `Maps` holds a writer, and the reader never hands out the `&mut
    /// Maps` that writing takes.
    pub(super) fn over(view: SlotsView) -> Self {
        Self { view }
    }

    pub fn view(&self) -> &SlotsView {
        &self.view
    }

    pub fn write(&mut self, offset: u32, slots: &[u32]) -> Result<()> {
        let mapping = &self.view.mapping;
        let end = offset as usize + slots.len();
        if end > mapping.len {
            bail!(
                "ring {offset}+{} beyond MAGLEV_SLOTS ({})",
                slots.len(),
                mapping.len
            );
        }
        // Relaxed: the kernel reads these slots only after a frontend is
        // published pointing at them, by a syscall that orders the writes.
        for (i, &slot) in slots.iter().enumerate() {
            self.view
                .slot(offset as usize + i)
                .store(u64::from(slot), Ordering::Relaxed);
        }
        Ok(())
    }
}

impl SlotsView {
    pub fn len(&self) -> u32 {
        self.mapping.len as u32
    }

    pub fn is_empty(&self) -> bool {
        self.mapping.len == 0
    }

    fn slot(&self, index: usize) -> &AtomicU64 {
        assert!(index < self.mapping.len);
        // SAFETY: in bounds, 8-byte aligned (the mapping is page aligned),
        // and live as long as `self` holds the mapping.
        unsafe { AtomicU64::from_ptr(self.mapping.ptr.add(index)) }
    }

    pub fn read(&self, offset: u32, len: u32) -> Result<Vec<u32>> {
        let end = offset as usize + len as usize;
        if end > self.mapping.len {
            bail!(
                "ring {offset}+{len} beyond MAGLEV_SLOTS ({})",
                self.mapping.len
            );
        }
        Ok((offset as usize..end)
            .map(|i| self.slot(i).load(Ordering::Relaxed) as u32)
            .collect())
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `map_data` mapped, once the last
        // handle on it is gone.
        unsafe { libc::munmap(self.ptr.cast(), (self.len * 8).next_multiple_of(4096)) };
    }
}
