//! Benchmark placeholder; replaced by the identity work.
fn main() {}
