//! D-Bus dictionaries: the `a{sv}` options of calls, and reading the ones returned.

use std::collections::HashMap;

use zbus::{OwnedVariant, Variant};

/// An `a{sv}` dictionary, as sent and as returned.
pub type Dict = HashMap<String, OwnedVariant>;

/// The options dictionary of these pairs.
pub fn opts(pairs: &[(&str, Variant<'_>)]) -> Dict {
    let owned = |v: &Variant<'_>| OwnedVariant::try_from(v).expect("plain value");
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), owned(v)))
        .collect()
}

/// No options.
pub fn no_opts() -> Dict {
    Dict::new()
}

/// A typed entry of a dictionary.
#[track_caller]
pub fn get<'a, T>(dict: &'a Dict, key: &str) -> T
where
    T: TryFrom<&'a OwnedVariant>,
    <T as TryFrom<&'a OwnedVariant>>::Error: std::fmt::Debug,
{
    let value = dict
        .get(key)
        .unwrap_or_else(|| panic!("no {key:?} in {dict:?}"));
    T::try_from(value).unwrap_or_else(|e| panic!("{key:?} in {dict:?}: {e:?}"))
}

/// A string entry of a dictionary.
#[track_caller]
pub fn dict_str(d: &Dict, key: &str) -> String {
    get::<&str>(d, key).to_owned()
}
