//! Criterion benches live in `benches/benches/`; load scripts in `benches/load/`.
