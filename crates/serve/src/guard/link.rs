//! Linking keys that look like one client: keys that keep sending near-duplicates of each
//! other's prompts (shared MinHash bands) are joined into a group, whose volume is judged
//! together, so an attacker cannot stay under the limits by spreading over many keys.

use std::collections::HashMap;

/// Keys a band bucket remembers. A bucket used by more keys is a prompt everyone sends
/// ("hello") and links nobody.
const KEYS_PER_BUCKET: usize = 8;
/// Buckets remembered before the table is reset: bounds memory; linking restarts from scratch.
const MAX_BUCKETS: usize = 1 << 20;

#[derive(Default)]
pub struct Linker {
    /// Band bucket → keys (indices) that sent a prompt in it.
    buckets: HashMap<u64, Vec<u32>>,
    /// (smaller, larger) key index → distinct buckets both used.
    shared: HashMap<(u32, u32), u32>,
    parent: Vec<u32>,
    members: HashMap<u32, Vec<u32>>,
}

impl Linker {
    /// Registers key `key`'s band buckets of one request; links it to every key it now shares
    /// at least `min_shared` buckets with.
    pub fn observe(&mut self, key: u32, bands: &[u64], min_shared: usize) {
        self.ensure(key);
        if self.buckets.len() > MAX_BUCKETS {
            self.buckets.clear();
            self.shared.clear();
        }
        for band in bands {
            let keys = self.buckets.entry(*band).or_default();
            if keys.contains(&key) || keys.len() > KEYS_PER_BUCKET {
                continue;
            }
            keys.push(key);
            if keys.len() > KEYS_PER_BUCKET {
                continue;
            }
            let others: Vec<u32> = keys.iter().copied().filter(|k| *k != key).collect();
            for other in others {
                let pair = (key.min(other), key.max(other));
                let n = self.shared.entry(pair).or_insert(0);
                *n += 1;
                if *n as usize >= min_shared {
                    self.union(key, other);
                }
            }
        }
    }

    fn ensure(&mut self, key: u32) {
        while self.parent.len() <= key as usize {
            self.parent.push(self.parent.len() as u32);
        }
    }

    fn root(&mut self, mut key: u32) -> u32 {
        self.ensure(key);
        while self.parent[key as usize] != key {
            let grand = self.parent[self.parent[key as usize] as usize];
            self.parent[key as usize] = grand;
            key = grand;
        }
        key
    }

    fn union(&mut self, a: u32, b: u32) {
        let (ra, rb) = (self.root(a), self.root(b));
        if ra == rb {
            return;
        }
        let (keep, gone) = if ra < rb { (ra, rb) } else { (rb, ra) };
        self.parent[gone as usize] = keep;
        let mut moved = self.members.remove(&gone).unwrap_or_else(|| vec![gone]);
        self.members.entry(keep).or_insert_with(|| vec![keep]).append(&mut moved);
    }

    /// The keys linked with `key`, itself included.
    pub fn group(&mut self, key: u32) -> Vec<u32> {
        let root = self.root(key);
        self.members.get(&root).cloned().unwrap_or_else(|| vec![key])
    }

    /// Unlinks `key` (an admin cleared it): it starts again as a group of one.
    pub fn forget(&mut self, key: u32) {
        let root = self.root(key);
        if let Some(members) = self.members.remove(&root) {
            let rest: Vec<u32> = members.into_iter().filter(|k| *k != key).collect();
            for k in &rest {
                self.parent[*k as usize] = *k;
            }
            if let Some((&first, others)) = rest.split_first() {
                for k in others {
                    self.parent[*k as usize] = first;
                }
                if rest.len() > 1 {
                    self.members.insert(first, rest);
                }
            }
        }
        self.parent[key as usize] = key;
        self.shared.retain(|(a, b), _| *a != key && *b != key);
        for keys in self.buckets.values_mut() {
            keys.retain(|k| *k != key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sharing_enough_buckets_are_linked_and_forget_unlinks() {
        let mut l = Linker::default();
        for bucket in 0..5u64 {
            l.observe(0, &[bucket], 3);
            l.observe(1, &[bucket], 3);
            l.observe(2, &[100 + bucket], 3);
        }
        let mut g = l.group(1);
        g.sort();
        assert_eq!(g, [0, 1]);
        assert_eq!(l.group(2), [2]);
        l.forget(1);
        assert_eq!(l.group(0), [0]);
        assert_eq!(l.group(1), [1]);
    }

    #[test]
    fn a_bucket_everyone_uses_links_nobody() {
        let mut l = Linker::default();
        for key in 0..20 {
            for bucket in 0..10u64 {
                l.observe(key, &[bucket], 20);
            }
        }
        // The first KEYS_PER_BUCKET keys share 10 buckets < 20; later keys are not tracked.
        assert_eq!(l.group(19), [19]);
        let mut l = Linker::default();
        for key in 0..3 {
            for bucket in 0..10u64 {
                l.observe(key, &[bucket], 10);
            }
        }
        assert_eq!(l.group(2).len(), 3);
    }
}
