//! The symbol table: name -> symbol lookups without any lock, for every request.
//!
//! Why not a `may::sync::RwLock<HashMap>`: may's `RwLock::read` takes an internal mutex twice, so
//! every poll would queue on one shared lock just to find its symbols. Symbols are only ever
//! added, never removed, and there are at most `--max-symbols` of them, so a fixed-capacity
//! open-addressing table whose slots are set once (`OnceLock`) needs no lock to read: a lookup
//! probes slots until it finds the name or an empty slot. Inserts are serialized by a
//! `may::sync::Mutex`, so a slot is never raced for and `OnceLock::set` never waits.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::{Arc, OnceLock};

use may::sync::Mutex;

/// A slot: empty until set, once, to a name and its value.
type Slot<T> = OnceLock<(Arc<str>, T)>;

/// An insert-only table of at most `max` values keyed by name.
pub struct Table<T> {
    slots: Box<[Slot<T>]>,
    hasher: RandomState,
    /// Writers only: the sorted names (for listing) and the count. Readers never take it,
    /// except [`Table::names`].
    writer: Mutex<Vec<Arc<str>>>,
    max: usize,
}

/// The table already holds its maximum number of values.
#[derive(Debug, PartialEq, Eq)]
pub struct Full {
    pub max: usize,
}

impl<T> Table<T> {
    pub fn new(max: usize) -> Table<T> {
        // At most half full, so probes stay short and always reach an empty slot.
        let cap = (max.max(1) * 2).next_power_of_two();
        Table {
            slots: (0..cap).map(|_| OnceLock::new()).collect(),
            hasher: RandomState::new(),
            writer: Mutex::new(Vec::new()),
            max,
        }
    }

    fn start(&self, name: &str) -> usize {
        (self.hasher.hash_one(name) as usize) & (self.slots.len() - 1)
    }

    /// The value named `name`, without locking. A reference, not an `Arc` clone: values live as
    /// long as the table, and thousands of polls woken together would otherwise all write one
    /// shared reference count.
    pub fn get(&self, name: &str) -> Option<&T> {
        let mask = self.slots.len() - 1;
        let mut i = self.start(name);
        loop {
            match self.slots[i].get() {
                None => return None,
                Some((n, v)) if &**n == name => return Some(v),
                Some(_) => i = (i + 1) & mask,
            }
        }
    }

    /// The value named `name`, inserting `make()` if absent. Returns the value and whether it
    /// was inserted now.
    pub fn get_or_insert_with(
        &self,
        name: &str,
        make: impl FnOnce(Arc<str>) -> T,
    ) -> Result<(&T, bool), Full> {
        if let Some(v) = self.get(name) {
            return Ok((v, false));
        }
        let mut names = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        // Re-check under the writer lock: another publisher may have just added it.
        if let Some(v) = self.get(name) {
            return Ok((v, false));
        }
        if names.len() >= self.max {
            return Err(Full { max: self.max });
        }
        let name: Arc<str> = name.into();
        let value = make(Arc::clone(&name));
        let mask = self.slots.len() - 1;
        let mut i = self.start(&name);
        while self.slots[i].get().is_some() {
            i = (i + 1) & mask;
        }
        let at = names.binary_search(&name).unwrap_or_else(|i| i);
        names.insert(at, Arc::clone(&name));
        // Cannot fail: only writers set slots, and they hold `writer`.
        let _ = self.slots[i].set((name, value));
        let value = &self.slots[i].get().expect("set just now").1;
        Ok((value, true))
    }

    /// Insert every name of `names` that is absent, `make(name)` each, all or none: if they do
    /// not all fit, nothing is inserted. Returns the names inserted now.
    pub fn insert_missing(
        &self,
        names: &[&str],
        mut make: impl FnMut(Arc<str>) -> T,
    ) -> Result<Vec<Arc<str>>, Full> {
        let mut missing: Vec<&str> = names
            .iter()
            .copied()
            .filter(|n| self.get(n).is_none())
            .collect();
        missing.sort_unstable();
        missing.dedup();
        if missing.is_empty() {
            return Ok(Vec::new());
        }
        let mut sorted = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        // Re-check under the writer lock: another publisher may have added some meanwhile.
        missing.retain(|n| self.get(n).is_none());
        if sorted.len() + missing.len() > self.max {
            return Err(Full { max: self.max });
        }
        let mask = self.slots.len() - 1;
        let mut inserted = Vec::with_capacity(missing.len());
        for name in missing {
            let name: Arc<str> = name.into();
            let value = make(Arc::clone(&name));
            let mut i = self.start(&name);
            while self.slots[i].get().is_some() {
                i = (i + 1) & mask;
            }
            let at = sorted.binary_search(&name).unwrap_or_else(|i| i);
            sorted.insert(at, Arc::clone(&name));
            // Cannot fail: only writers set slots, and they hold `writer`.
            let _ = self.slots[i].set((Arc::clone(&name), value));
            inserted.push(name);
        }
        Ok(inserted)
    }

    /// All names, sorted.
    pub fn names(&self) -> Vec<Arc<str>> {
        self.writer.lock().map(|n| n.clone()).unwrap_or_default()
    }

    pub fn len(&self) -> usize {
        self.writer.lock().map(|n| n.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inserted_values_are_found_and_others_are_not() {
        let t: Table<u32> = Table::new(100);
        for i in 0..100u32 {
            let (_, new) = t.get_or_insert_with(&format!("S{i}"), |_| i).unwrap();
            assert!(new);
        }
        for i in 0..100u32 {
            assert_eq!(t.get(&format!("S{i}")), Some(&i));
        }
        assert!(t.get("S100").is_none());
        assert_eq!(t.len(), 100);
    }

    #[test]
    fn inserting_twice_keeps_the_first_value() {
        let t: Table<u32> = Table::new(4);
        assert_eq!(
            t.get_or_insert_with("A", |_| 1).map(|(v, n)| (*v, n)),
            Ok((1, true))
        );
        assert_eq!(
            t.get_or_insert_with("A", |_| 2).map(|(v, n)| (*v, n)),
            Ok((1, false))
        );
    }

    #[test]
    fn inserting_many_is_all_or_nothing() {
        let t: Table<u32> = Table::new(3);
        t.get_or_insert_with("A", |_| 1).unwrap();
        assert_eq!(
            t.insert_missing(&["A", "B", "C", "D"], |_| 0).err(),
            Some(Full { max: 3 })
        );
        assert_eq!(t.len(), 1);
        let added = t.insert_missing(&["B", "A", "B", "C"], |_| 7).unwrap();
        assert_eq!(added.iter().map(|n| &**n).collect::<Vec<_>>(), ["B", "C"]);
        assert_eq!(t.get("C"), Some(&7));
        assert_eq!(t.get("A"), Some(&1));
    }

    #[test]
    fn the_table_refuses_more_than_max() {
        let t: Table<u32> = Table::new(2);
        t.get_or_insert_with("A", |_| 1).unwrap();
        t.get_or_insert_with("B", |_| 2).unwrap();
        assert_eq!(
            t.get_or_insert_with("C", |_| 3).err(),
            Some(Full { max: 2 })
        );
        assert_eq!(&*t.names(), &[Arc::from("A"), Arc::from("B")]);
    }
}
