//! Where each step's records go (work in progress).
