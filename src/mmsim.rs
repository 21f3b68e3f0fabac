//! mmsim: not written yet.
