//! Placeholder until the group-commit benchmark lands (next commit).
fn main() {}
