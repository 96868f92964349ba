//! Placeholder; replaced by the connected-vehicle command service.
fn main() {}
