//! api: not written yet.
