//! engine: not written yet.
