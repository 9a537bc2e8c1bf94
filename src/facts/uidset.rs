//! [`SmallSet`]: the persistent set the fact view's indexes hold per key
//! (the children of a parent, the holders of a tag key, the workspaces
//! with a key, ...).
//!
//! Most of those sets are small (one workspace per key, some twenty
//! holders per tag key), and `imbl`'s hash set allocates whole nodes of
//! 32 slots (about 4 KB for one entity uid), which made these indexes the
//! largest part of a 1M-membership view. A small set is a shared vector
//! (cloned in O(1), copied on write: at most [`SMALL`] elements); a larger
//! one is `imbl`'s persistent set. Equality is set equality, whatever the
//! representation.

use std::fmt;
use std::hash::Hash;
use std::sync::Arc;

use imbl::shared_ptr::DefaultSharedPtr;

/// Most elements a set keeps as a vector.
pub const SMALL: usize = 32;

/// A persistent set: a clone is O(1), an insert or removal copies at most
/// [`SMALL`] elements or a path of `imbl`'s set.
#[derive(Clone)]
pub enum SmallSet<T: Clone + Hash + Eq> {
    /// At most [`SMALL`] distinct elements, in no particular order.
    Small(Arc<Vec<T>>),
    Large(imbl::HashSet<T>),
}

impl<T: Clone + Hash + Eq> Default for SmallSet<T> {
    fn default() -> Self {
        SmallSet::Small(Arc::new(Vec::new()))
    }
}

impl<T: Clone + Hash + Eq> SmallSet<T> {
    pub fn len(&self) -> usize {
        match self {
            SmallSet::Small(v) => v.len(),
            SmallSet::Large(s) => s.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn contains(&self, x: &T) -> bool {
        match self {
            SmallSet::Small(v) => v.contains(x),
            SmallSet::Large(s) => s.contains(x),
        }
    }

    /// Add `x`: whether it was absent.
    pub fn insert(&mut self, x: T) -> bool {
        match self {
            SmallSet::Small(v) => {
                if v.contains(&x) {
                    return false;
                }
                if v.len() < SMALL {
                    Arc::make_mut(v).push(x);
                } else {
                    let mut large: imbl::HashSet<T> = v.iter().cloned().collect();
                    large.insert(x);
                    *self = SmallSet::Large(large);
                }
                true
            }
            SmallSet::Large(s) => s.insert(x).is_none(),
        }
    }

    /// Remove `x`: whether it was there.
    pub fn remove(&mut self, x: &T) -> bool {
        match self {
            SmallSet::Small(v) => match v.iter().position(|y| y == x) {
                Some(i) => {
                    Arc::make_mut(v).swap_remove(i);
                    true
                }
                None => false,
            },
            SmallSet::Large(s) => {
                let gone = s.remove(x).is_some();
                if gone && s.len() <= SMALL / 2 {
                    *self = SmallSet::Small(Arc::new(s.iter().cloned().collect()));
                }
                gone
            }
        }
    }

    pub fn iter(&self) -> Iter<'_, T> {
        match self {
            SmallSet::Small(v) => Iter::Small(v.iter()),
            SmallSet::Large(s) => Iter::Large(s.iter()),
        }
    }
}

/// The elements of a [`SmallSet`], in no particular order.
pub enum Iter<'a, T: Clone + Hash + Eq> {
    Small(std::slice::Iter<'a, T>),
    Large(imbl::hashset::Iter<'a, T, DefaultSharedPtr>),
}

impl<'a, T: Clone + Hash + Eq> Iterator for Iter<'a, T> {
    type Item = &'a T;

    fn next(&mut self) -> Option<&'a T> {
        match self {
            Iter::Small(i) => i.next(),
            Iter::Large(i) => i.next(),
        }
    }
}

impl<'a, T: Clone + Hash + Eq> IntoIterator for &'a SmallSet<T> {
    type Item = &'a T;
    type IntoIter = Iter<'a, T>;

    fn into_iter(self) -> Iter<'a, T> {
        self.iter()
    }
}

impl<T: Clone + Hash + Eq> FromIterator<T> for SmallSet<T> {
    fn from_iter<I: IntoIterator<Item = T>>(items: I) -> Self {
        let mut v: Vec<T> = Vec::new();
        let mut items = items.into_iter();
        for x in items.by_ref() {
            if !v.contains(&x) {
                v.push(x);
                if v.len() > SMALL {
                    let mut large: imbl::HashSet<T> = v.into_iter().collect();
                    large.extend(items);
                    return SmallSet::Large(large);
                }
            }
        }
        v.shrink_to_fit();
        SmallSet::Small(Arc::new(v))
    }
}

impl<T: Clone + Hash + Eq> PartialEq for SmallSet<T> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().all(|x| other.contains(x))
    }
}

impl<T: Clone + Hash + Eq> Eq for SmallSet<T> {}

impl<T: Clone + Hash + Eq + fmt::Debug> fmt::Debug for SmallSet<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_into_a_persistent_set_and_back_with_set_semantics() {
        let mut s: SmallSet<u32> = SmallSet::default();
        for i in 0..100 {
            assert!(s.insert(i));
            assert!(!s.insert(i));
            assert_eq!(s.len(), i as usize + 1);
        }
        assert!(matches!(s, SmallSet::Large(_)));
        let snapshot = s.clone();
        for i in 0..95 {
            assert!(s.remove(&i));
            assert!(!s.remove(&i));
        }
        assert!(matches!(s, SmallSet::Small(_)));
        let mut left: Vec<u32> = s.iter().copied().collect();
        left.sort_unstable();
        assert_eq!(left, [95, 96, 97, 98, 99]);
        // The clone taken before is untouched.
        assert_eq!(snapshot.len(), 100);
        assert!((0..100).all(|i| snapshot.contains(&i)));
        // Equality is set equality across representations and orders.
        let a: SmallSet<u32> = [3, 1, 2, 1].into_iter().collect();
        let b: SmallSet<u32> = [1, 2, 3].into_iter().collect();
        assert_eq!(a, b);
        assert_eq!(a.len(), 3);
        let big: SmallSet<u32> = (0..40).collect();
        let mut small_then_big: SmallSet<u32> = SmallSet::default();
        for i in (0..40).rev() {
            small_then_big.insert(i);
        }
        assert_eq!(big, small_then_big);
        assert_ne!(big, a);
    }
}
