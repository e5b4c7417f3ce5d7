//! Black-box test harness (see the suites in `tests/tests/`).
