//! Spool files (work in progress).
