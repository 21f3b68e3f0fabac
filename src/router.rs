//! router: not written yet.
