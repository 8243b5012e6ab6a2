//! A fast hasher for the maps keyed by ids: the scheduler's, the dispatcher's
//! and the store's tables.
//!
//! The maps are keyed by ids the manager generates (tasks, nodes, services), so
//! no outside party chooses the keys and std's DoS-resistant SipHash buys
//! nothing; it was a visible share of a 100 000-task pass. This is the
//! multiply-rotate word hash used by rustc (FxHash) plus a final avalanche, so
//! the low bits hashbrown indexes with depend on every input byte.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

/// A `HashMap` with [`FastHasher`].
pub type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;
/// A `HashSet` with [`FastHasher`].
pub type FastSet<K> = HashSet<K, BuildHasherDefault<FastHasher>>;

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

/// See the module docs.
#[derive(Debug, Default, Clone, Copy)]
pub struct FastHasher {
    hash: u64,
}

impl FastHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for FastHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            self.add(u64::from_le_bytes(chunk.try_into().expect("8-byte chunk")));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word));
        }
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }

    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }

    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        // murmur3's fmix64.
        let mut h = self.hash;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    #[test]
    fn similar_ids_spread_over_low_bits() {
        let build = BuildHasherDefault::<FastHasher>::default();
        let buckets: FastSet<u64> = (0..1024)
            .map(|i| build.hash_one(format!("task-{i:06}")) & 1023)
            .collect();
        // A uniform hash fills about 63% of 1024 buckets with 1024 keys.
        assert!(buckets.len() > 550, "{}", buckets.len());
        let mut map: FastMap<String, u32> = FastMap::default();
        map.insert("a".into(), 1);
        assert_eq!(map.get("a"), Some(&1));
    }
}
