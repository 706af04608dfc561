//! Benchmarks. `benches/` holds the criterion micro-benchmarks (`cargo bench -p
//! shotover-benches`); `load/` holds the end-to-end load scripts.
