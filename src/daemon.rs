//! daemon: not written yet.
