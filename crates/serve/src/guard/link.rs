//! Linking keys that look like one client: keys that keep sending near-duplicates of each
//! other's prompts (shared MinHash bands), or requests with the same settings from the same
//! network, *at the same time* are joined into a group, whose volume is judged together, so an
//! attacker cannot stay under the limits by spreading over many keys. Sharing a template alone
//! is not enough: people using the same public prompt or app do that all day, hours apart; one
//! client driving many keys does it within minutes, and for a good part of its requests.

use std::collections::HashMap;

/// Keys a band bucket remembers. A bucket used by more keys at once is a prompt everyone
/// sends ("hello") and links nobody.
const KEYS_PER_BUCKET: usize = 8;
/// Buckets remembered before those not used recently are dropped: bounds memory.
const MAX_BUCKETS: usize = 1 << 20;

#[derive(Default)]
pub struct Linker {
    /// Band bucket → keys (indices) that sent a prompt in it, and when they last did.
    buckets: HashMap<u64, Vec<(u32, f64)>>,
    /// (smaller, larger) key index → distinct buckets both used since the time given.
    shared: HashMap<(u32, u32), (u32, f64)>,
    parent: Vec<u32>,
    members: HashMap<u32, Vec<u32>>,
}

impl Linker {
    /// Registers key `key`'s evidence buckets of one request at time `at`; returns the keys,
    /// not yet linked with it, that it has now shared at least `min_shared` buckets with, each
    /// within `within` seconds, in the last `period` seconds, with the count. The caller decides
    /// whether to [`Linker::link`] them.
    pub fn observe(
        &mut self,
        key: u32,
        bands: &[u64],
        at: f64,
        within: f64,
        min_shared: usize,
        period: f64,
    ) -> Vec<(u32, u32)> {
        self.ensure(key);
        if self.buckets.len() > MAX_BUCKETS {
            self.buckets.retain(|_, keys| keys.iter().any(|(_, seen)| at - seen <= within));
            if self.shared.len() > MAX_BUCKETS {
                self.shared.clear();
            }
        }
        let mut candidates = Vec::new();
        for band in bands {
            let keys = self.buckets.entry(*band).or_default();
            // Only keys active in this bucket lately count: the crowd that used a prompt
            // yesterday neither links anyone today nor crowds today's users out.
            keys.retain(|(k, seen)| *k == key || at - seen <= within);
            if keys.len() > KEYS_PER_BUCKET {
                continue;
            }
            if let Some(mine) = keys.iter_mut().find(|(k, _)| *k == key) {
                mine.1 = at;
                continue;
            }
            keys.push((key, at));
            if keys.len() > KEYS_PER_BUCKET {
                continue;
            }
            let others: Vec<u32> =
                keys.iter().filter(|(k, seen)| *k != key && at - seen <= within).map(|(k, _)| *k).collect();
            for other in others {
                let pair = (key.min(other), key.max(other));
                let (n, since) = self.shared.entry(pair).or_insert((0, at));
                // Coincidences add up over days between busy keys: only a period's count counts.
                if at - *since > period {
                    (*n, *since) = (0, at);
                }
                *n += 1;
                if *n as usize >= min_shared {
                    match candidates.iter_mut().find(|(k, _)| *k == other) {
                        Some(c) => c.1 = *n,
                        None => candidates.push((other, *n)),
                    }
                }
            }
        }
        candidates.retain(|(other, _)| self.root(*other) != self.root(key));
        candidates
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

    /// Joins the groups of `a` and `b`.
    pub fn link(&mut self, a: u32, b: u32) {
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
            keys.retain(|(k, _)| *k != key);
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
            let at = bucket as f64 * 10.0;
            l.observe(0, &[bucket], at, 60.0, 3, 3600.0);
            for (other, _) in l.observe(1, &[bucket], at + 1.0, 60.0, 3, 3600.0) {
                l.link(1, other);
            }
            l.observe(2, &[100 + bucket], at, 60.0, 3, 3600.0);
            // Key 3 uses the same buckets, but hours later.
            assert!(l.observe(3, &[bucket], at + 7200.0, 60.0, 3, 3600.0).is_empty());
        }
        let mut g = l.group(1);
        g.sort();
        assert_eq!(g, [0, 1]);
        assert_eq!(l.group(2), [2]);
        assert_eq!(l.group(3), [3]);
        l.forget(1);
        assert_eq!(l.group(0), [0]);
        assert_eq!(l.group(1), [1]);
    }

    #[test]
    fn a_bucket_everyone_uses_links_nobody() {
        let mut l = Linker::default();
        for key in 0..20 {
            for bucket in 0..10u64 {
                assert!(l.observe(key, &[bucket], 0.0, 60.0, 20, 3600.0).is_empty());
            }
        }
        // The first KEYS_PER_BUCKET keys share 10 buckets < 20; later keys are not tracked.
        assert_eq!(l.group(19), [19]);
        let mut l = Linker::default();
        for key in 0..3 {
            for bucket in 0..10u64 {
                for (other, _) in l.observe(key, &[bucket], 0.0, 60.0, 10, 3600.0) {
                    l.link(key, other);
                }
            }
        }
        assert_eq!(l.group(2).len(), 3);
    }
}
