//! notifier: not written yet.
