//! store: not written yet.
