//! Id and ring-segment allocation. Ids are small integers because they index
//! arrays in the data plane; freed ones are reused.
use std::collections::BTreeMap;

use anyhow::{bail, Result};

/// Hands out the lowest free id from `first`.
#[derive(Debug)]
pub struct Ids {
    next: u32,
    free: Vec<u32>,
    limit: u32,
    /// The map the ids index, for the message when they run out.
    map: &'static str,
}

impl Ids {
    pub fn new(first: u32, limit: u32, map: &'static str) -> Self {
        Self {
            next: first,
            free: Vec::new(),
            limit,
            map,
        }
    }

    pub fn take(&mut self) -> Result<u32> {
        if let Some(id) = self.free.pop() {
            return Ok(id);
        }
        if self.next >= self.limit {
            bail!(
                "does not fit: {} holds {} entries, all in use",
                self.map,
                self.limit
            );
        }
        self.next += 1;
        Ok(self.next - 1)
    }

    pub fn give(&mut self, id: u32) {
        self.free.push(id);
    }

    /// Marks `id` as in use (recovery from pinned maps).
    pub fn claim(&mut self, id: u32) {
        self.free.retain(|&f| f != id);
        while self.next <= id {
            if self.next != id {
                self.free.push(self.next);
            }
            self.next += 1;
        }
    }
}

/// First-fit allocation of contiguous slot ranges in `MAGLEV_SLOTS`, with
/// neighbouring free ranges merged so churn does not fragment the array.
#[derive(Debug)]
pub struct Segments {
    /// Free ranges by offset -> length.
    free: BTreeMap<u32, u32>,
}

impl Segments {
    pub fn new(capacity: u32) -> Self {
        Self {
            free: BTreeMap::from([(0, capacity)]),
        }
    }

    pub fn take(&mut self, len: u32) -> Result<u32> {
        let Some((&off, &avail)) = self.free.iter().find(|(_, &l)| l >= len) else {
            bail!("does not fit: no {len} free slots in a row in MAGLEV_SLOTS");
        };
        self.free.remove(&off);
        if avail > len {
            self.free.insert(off + len, avail - len);
        }
        Ok(off)
    }

    pub fn give(&mut self, off: u32, len: u32) {
        if len == 0 {
            return;
        }
        let (mut off, mut len) = (off, len);
        if let Some((&prev, &plen)) = self.free.range(..off).next_back() {
            if prev + plen == off {
                self.free.remove(&prev);
                off = prev;
                len += plen;
            }
        }
        if let Some(&nlen) = self.free.get(&(off + len)) {
            self.free.remove(&(off + len));
            len += nlen;
        }
        self.free.insert(off, len);
    }

    /// Marks a range as in use (recovery from pinned maps).
    pub fn claim(&mut self, off: u32, len: u32) -> Result<()> {
        // A service without backends has an empty ring that owns no slots.
        if len == 0 {
            return Ok(());
        }
        let Some((&start, &flen)) = self.free.range(..=off).next_back() else {
            bail!("ring at {off} overlaps another");
        };
        if start + flen < off + len {
            bail!("ring at {off}+{len} overlaps another");
        }
        self.free.remove(&start);
        if off > start {
            self.free.insert(start, off - start);
        }
        if start + flen > off + len {
            self.free.insert(off + len, start + flen - off - len);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_merge_and_reuse() {
        let mut s = Segments::new(100);
        let a = s.take(30).unwrap();
        let b = s.take(30).unwrap();
        let c = s.take(30).unwrap();
        assert_eq!((a, b, c), (0, 30, 60));
        assert!(s.take(30).is_err());
        s.give(a, 30);
        s.give(b, 30);
        assert_eq!(s.take(60).unwrap(), 0, "freed neighbours merge");
        s.give(0, 60);
        s.give(c, 30);
        assert_eq!(s.take(100).unwrap(), 0);
    }

    #[test]
    fn ids_reuse_and_claim() {
        let mut ids = Ids::new(1, 10, "TEST");
        ids.claim(4);
        let got: Vec<u32> = (0..3).map(|_| ids.take().unwrap()).collect();
        assert!(!got.contains(&4) && got.iter().all(|&i| (1..10).contains(&i)));
        ids.give(got[0]);
        assert_eq!(ids.take().unwrap(), got[0]);
    }
}
