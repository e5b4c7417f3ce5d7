//! Budgets: the arithmetic every ledger backend shares, so the in-memory ledger and the Postgres
//! one cannot disagree on when a call fits.
//!
//! - [`Period`]: when a budget's spend starts again from zero (`day`, `month` in UTC, or never).
//! - [`Account`]: one budget scope (a tenant, or a tenant narrowed to a model): limit, spent in the
//!   current period, reserved by calls in flight. A reservation fits only if
//!   `spent + reserved + amount <= limit`; settling moves the reserved amount to the real cost.
//!
//! Pure: the time comes in as unix seconds.

mod account;
mod period;

pub use account::{Account, Shortfall};
pub use period::{Period, period_start};
