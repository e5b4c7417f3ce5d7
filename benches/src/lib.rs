//! Criterion benches live in `benches/benches/`; load scripts in `benches/load/`.

use std::time::Duration;

/// The settings every bench here uses: short enough for a quick run on a small machine, long
/// enough for stable medians of sub-microsecond operations.
pub fn short_run() -> criterion::Criterion {
    criterion::Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20)
}
