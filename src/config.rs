//! config: not written yet.
