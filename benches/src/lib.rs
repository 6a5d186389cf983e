//! Benchmarks only: see `benches/dispatch.rs` and `README.md`.
