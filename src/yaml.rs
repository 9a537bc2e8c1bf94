//! YAML helpers shared by the file formats read with `serde_saphyr` (test
//! matrices and forward-auth routes): mappings kept in document order, and
//! a parse error's position and message in the words a diagnostic uses.

use std::fmt;
use std::marker::PhantomData;
use std::path::Path;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde::de::{MapAccess, Visitor};
use serde_saphyr::MessageFormatter;

use crate::diag::Diagnostic;

/// A mapping read in document order (serde maps have no order).
#[derive(Debug)]
pub struct Pairs<K, V>(pub Vec<(K, V)>);

impl<K, V> Default for Pairs<K, V> {
    fn default() -> Self {
        Pairs(Vec::new())
    }
}

impl<'de, K: Deserialize<'de>, V: Deserialize<'de>> Deserialize<'de> for Pairs<K, V> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct PairsVisitor<K, V>(PhantomData<(K, V)>);
        impl<'de, K: Deserialize<'de>, V: Deserialize<'de>> Visitor<'de> for PairsVisitor<K, V> {
            type Value = Pairs<K, V>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a mapping")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut pairs = Vec::new();
                while let Some(pair) = map.next_entry()? {
                    pairs.push(pair);
                }
                Ok(Pairs(pairs))
            }
        }
        d.deserialize_map(PairsVisitor(PhantomData))
    }
}

/// For `#[serde(deserialize_with)]`: a mapping in document order, where an
/// empty value (`key:` alone) is an empty mapping.
pub fn pairs_or_empty<'de, D, K, V>(d: D) -> Result<Pairs<K, V>, D::Error>
where
    D: serde::Deserializer<'de>,
    K: Deserialize<'de>,
    V: Deserialize<'de>,
{
    Option::<Pairs<K, V>>::deserialize(d).map(Option::unwrap_or_default)
}

/// A 1-based line and column, when the location is known (saphyr reports
/// an unknown one as zeros).
pub fn position(l: &serde_saphyr::Location) -> Option<(usize, usize)> {
    let line = usize::try_from(l.line()).ok()?;
    let column = usize::try_from(l.column()).ok()?;
    (line > 0 && column > 0).then_some((line, column))
}

/// A parse error's message on one line, without the source snippet (the
/// diagnostic names the place) and without saphyr's hint about its own
/// duplicate-key setting.
pub fn message(e: &serde_saphyr::Error) -> String {
    let message = serde_saphyr::DefaultMessageFormatter.format_message(e.without_snippet());
    message
        .split(", set DuplicateKeyPolicy")
        .next()
        .unwrap_or_default()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// The YAML file `path` (its `text`) read as a `T`; a syntax or shape error
/// is a diagnostic at its position: `invalid {what} file: ...`.
pub fn parse_file<T: DeserializeOwned>(
    path: &Path,
    text: &str,
    what: &str,
) -> Result<T, Diagnostic> {
    serde_saphyr::from_str(text).map_err(|e| {
        let at = e.location().as_ref().and_then(position);
        Diagnostic::plain(
            Some(path),
            at,
            format!("invalid {what} file: {}", message(&e)),
        )
    })
}
