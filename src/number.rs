//! number: not written yet.
