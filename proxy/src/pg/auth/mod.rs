//! Client authentication.

pub mod scram;
