//! Maglev lookup tables (Eisenbud et al., NSDI 2016), built by the agent and
//! written into `MAGLEV_SLOTS`. Pure: the same backend set always gives the
//! same table, on every node and across restarts.

/// Largest ring: bounds the memory one service can take in `MAGLEV_SLOTS`
/// (Cilium's largest supported size).
pub const MAX_RING: u32 = 131_071;
/// Slots per backend below which Maglev's disruption bound gets loose.
pub const SLOTS_PER_BACKEND: u32 = 100;

fn is_prime(n: u32) -> bool {
    n >= 2
        && (2..)
            .take_while(|d| d * d <= n)
            .all(|d| !n.is_multiple_of(d))
}

/// The smallest prime M >= 100 N (at least 101), capped at `MAX_RING`.
pub fn ring_size(backends: usize) -> u32 {
    let want = (backends as u64 * SLOTS_PER_BACKEND as u64).clamp(101, MAX_RING as u64) as u32;
    (want..=MAX_RING).find(|&n| is_prime(n)).unwrap_or(MAX_RING)
}

/// FNV-1a finished with murmur3's 64-bit mixer: stable across Rust releases
/// and platforms, unlike std's hasher, which matters because every node must
/// build the same table. Plain FNV-1a leaves similar names (consecutive pod
/// IPs) with correlated permutations, which doubles Maglev's disruption.
fn stable_hash(seed: u64, bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325 ^ seed;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// Builds a table of `m` slots (prime) over `names`, each the stable identity
/// of one backend (for example "10.0.1.5:8080"). Returns, per slot, the index
/// into `names` that owns it; empty when there are no backends.
pub fn table(names: &[String], m: u32) -> Vec<u32> {
    if names.is_empty() {
        return Vec::new();
    }
    let m64 = m as u64;
    let prefs: Vec<(u64, u64)> = names
        .iter()
        .map(|n| {
            let offset = stable_hash(0, n.as_bytes()) % m64;
            let skip = stable_hash(0x5bd1_e995, n.as_bytes()) % (m64 - 1) + 1;
            (offset, skip)
        })
        .collect();
    let mut next = vec![0u64; names.len()];
    let mut slots = vec![u32::MAX; m as usize];
    let mut filled = 0;
    loop {
        for (i, &(offset, skip)) in prefs.iter().enumerate() {
            let mut c = (offset + next[i] * skip) % m64;
            while slots[c as usize] != u32::MAX {
                next[i] += 1;
                c = (offset + next[i] * skip) % m64;
            }
            slots[c as usize] = i as u32;
            next[i] += 1;
            filled += 1;
            if filled == m as usize {
                return slots;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("10.0.{}.{}:8080", i / 250, i % 250 + 1))
            .collect()
    }

    #[test]
    fn ring_is_prime_and_large_enough() {
        assert_eq!(ring_size(0), 101);
        assert_eq!(ring_size(1), 101);
        assert_eq!(ring_size(10), 1009);
        assert!(is_prime(ring_size(37)) && ring_size(37) >= 3700);
        assert_eq!(ring_size(100_000), MAX_RING);
    }

    #[test]
    fn fully_populated_and_deterministic() {
        let n = names(7);
        let t = table(&n, ring_size(7));
        assert_eq!(t.len(), ring_size(7) as usize);
        assert!(t.iter().all(|&i| (i as usize) < n.len()));
        assert_eq!(t, table(&n, ring_size(7)));
        assert!(table(&[], 101).is_empty());
    }

    #[test]
    fn spread_within_a_few_percent() {
        for count in [2, 3, 10, 50] {
            let n = names(count);
            let m = ring_size(count);
            let t = table(&n, m);
            let fair = m as f64 / count as f64;
            for i in 0..count {
                let got = t.iter().filter(|&&o| o as usize == i).count() as f64;
                assert!(
                    (got - fair).abs() / fair < 0.03,
                    "{count} backends: {got} vs {fair}"
                );
            }
        }
    }

    /// Share of all slots that a surviving backend owned before and lost
    /// after `gone` is removed, at ring size `m`.
    fn moved_on_removal(all: &[String], gone: usize, m: u32) -> f64 {
        let mut rest = all.to_vec();
        rest.remove(gone);
        let (a, b) = (table(all, m), table(&rest, m));
        let moved = a
            .iter()
            .zip(&b)
            .filter(|(&x, &y)| x as usize != gone && all[x as usize] != rest[y as usize])
            .count();
        moved as f64 / m as f64
    }

    /// Maglev trades a little disruption for balance: at M = 100 N about 3%
    /// of slots move on top of the removed backend's own, at M = 1000 N
    /// under 1% (the NSDI paper's figure 12 shows the same trend).
    #[test]
    fn removal_disruption_stays_within_maglevs_bound() {
        let all = names(10);
        for gone in 0..10 {
            let at_100n = moved_on_removal(&all, gone, ring_size(10));
            assert!(at_100n < 0.04, "removing {gone} at M=1009: {at_100n}");
            let at_1000n = moved_on_removal(&all, gone, 10_007);
            assert!(at_1000n < 0.01, "removing {gone} at M=10007: {at_1000n}");
        }
    }

    #[test]
    fn addition_moves_little_beyond_what_the_new_backend_takes() {
        let (before, after) = (names(20), names(21));
        for (m, bound) in [(ring_size(21), 0.04), (21_011, 0.01)] {
            let (a, b) = (table(&before, m), table(&after, m));
            let moved_elsewhere = a
                .iter()
                .zip(&b)
                .filter(|(&x, &y)| x != y && y as usize != 20)
                .count();
            let share = moved_elsewhere as f64 / m as f64;
            assert!(share < bound, "M={m}: {share}");
        }
    }
}
