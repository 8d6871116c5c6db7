//! In-batch deduplication: the first copy of each key in a batch wins.
//!
//! Invariant: the output holds each key of the input once, in first-arrival order, so
//! the row kept (its source partition and offset) does not depend on hash order. The
//! check against what the table already holds comes next
//! ([`crate::table::EventTable::existing_keys`]).

use std::collections::HashSet;

use crate::event::DedupKey;

/// Keeps the first item of each key; returns the kept items and how many were dropped.
pub fn first_of_each_key<T>(items: Vec<T>, key: impl Fn(&T) -> DedupKey) -> (Vec<T>, u64) {
    let mut seen = HashSet::with_capacity(items.len());
    let before = items.len();
    let kept: Vec<T> = items.into_iter().filter(|item| seen.insert(key(item))).collect();
    let dropped = (before - kept.len()) as u64;
    (kept, dropped)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn k(n: u8) -> DedupKey {
        DedupKey([n; 16])
    }

    #[test]
    fn the_first_copy_wins() {
        let (kept, dropped) =
            first_of_each_key(vec![(k(1), "a"), (k(2), "b"), (k(1), "c"), (k(2), "d"), (k(3), "e")], |x| x.0);
        assert_eq!(kept, vec![(k(1), "a"), (k(2), "b"), (k(3), "e")]);
        assert_eq!(dropped, 2);
    }

    proptest! {
        #[test]
        fn output_has_each_input_key_once(keys in proptest::collection::vec(0_u8..20, 0..200)) {
            let items: Vec<(DedupKey, usize)> = keys.iter().enumerate().map(|(i, n)| (k(*n), i)).collect();
            let distinct: HashSet<DedupKey> = items.iter().map(|x| x.0).collect();
            let (kept, dropped) = first_of_each_key(items.clone(), |x| x.0);
            prop_assert_eq!(kept.len(), distinct.len());
            prop_assert_eq!(kept.len() as u64 + dropped, items.len() as u64);
            let kept_keys: HashSet<DedupKey> = kept.iter().map(|x| x.0).collect();
            prop_assert_eq!(kept_keys, distinct);
            // Each kept item is the first with its key.
            for (key, index) in kept {
                prop_assert_eq!(items.iter().position(|x| x.0 == key), Some(index));
            }
        }
    }
}
