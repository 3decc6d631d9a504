//! Benchmark placeholder; replaced by the exchange work.
fn main() {}
