//! Placeholder: the latency bench lands with its own issue.
fn main() {}
