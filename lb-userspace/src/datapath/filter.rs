//! The loaded program's address filter (`lb_common::filter`): a global of
//! the program, which the kernel holds as a one-element array map whose
//! value is the whole bitmap. The map offers no per-word update, so this
//! keeps the image the program holds and writes it whole: one syscall per
//! batch of words, which is also what a sync wants.
//!
//! A torn read of a word being rewritten cannot mislead a packet: bits that
//! keep their value read the same from old and new bytes, and a changing bit
//! guards nothing yet (set before what it covers is published, cleared after
//! that is removed).
use anyhow::Result;
use aya::maps::{Array, Map, MapData};
use lb_common::filter::{position, AddrSet, FILTER_WORDS};

type Words = [u64; FILTER_WORDS as usize];

pub struct AddrFilter {
    map: Array<MapData, Words>,
    /// What the program's filter holds: all zero when the program is loaded.
    image: Box<Words>,
}

impl AddrFilter {
    pub fn new(map: Map) -> Result<Self> {
        let image = vec![0u64; FILTER_WORDS as usize]
            .into_boxed_slice()
            .try_into()
            .expect("FILTER_WORDS long");
        Ok(Self {
            map: map.try_into()?,
            image,
        })
    }

    /// Sets each listed word to its value, all in one map update.
    pub fn write(&mut self, words: &[(u32, u64)]) -> Result<()> {
        for &(word, bits) in words {
            self.image[word as usize] = bits;
        }
        // By reference: the value is 512 KiB, too big to pass on the stack.
        Ok(self.map.set(0, self.image.as_ref(), 0)?)
    }

    /// Sets `addr`'s bit.
    pub fn add(&mut self, addr: u32, set: AddrSet) -> Result<()> {
        let (word, bit) = position(addr, set);
        self.write(&[(word, self.image[word as usize] | bit)])
    }

    /// The non-zero words.
    pub fn words(&self) -> Vec<(u32, u64)> {
        (0..)
            .zip(self.image.iter())
            .filter(|(_, bits)| **bits != 0)
            .map(|(word, bits)| (word, *bits))
            .collect()
    }
}
