//! Counted places per key, each given back when its holder drops it: a token's watch streams,
//! a client address's connections. Knows nothing of what the places are for.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

/// How many places each key holds now.
#[derive(Debug)]
pub struct Slots<K>(Mutex<HashMap<K, usize>>);

impl<K> Default for Slots<K> {
    fn default() -> Slots<K> {
        Slots(Mutex::new(HashMap::new()))
    }
}

impl<K: Eq + Hash + Clone> Slots<K> {
    /// One more place for `key`, if it holds fewer than `max`.
    pub fn take(self: &Arc<Slots<K>>, key: &K, max: usize) -> Option<Slot<K>> {
        let mut held = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = held.entry(key.clone()).or_default();
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Slot {
            slots: self.clone(),
            key: key.clone(),
        })
    }
}

/// One place in [`Slots`], given back when dropped.
#[derive(Debug)]
pub struct Slot<K: Eq + Hash> {
    slots: Arc<Slots<K>>,
    key: K,
}

impl<K: Eq + Hash> Drop for Slot<K> {
    fn drop(&mut self) {
        let mut held = self.slots.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = held.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_counted_per_key_and_given_back() {
        let slots = Arc::new(Slots::default());
        let a1 = slots.take(&"a", 2).unwrap();
        let _a2 = slots.take(&"a", 2).unwrap();
        assert!(slots.take(&"a", 2).is_none());
        let _b = slots.take(&"b", 2).unwrap();
        drop(a1);
        let _a3 = slots.take(&"a", 2).unwrap();
        assert!(slots.take(&"a", 2).is_none());
        assert_eq!(slots.0.lock().unwrap().len(), 2);
    }
}
