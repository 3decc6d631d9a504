//! Benchmark placeholder; replaced by the coordination work.
fn main() {}
