//! The domain: config, plan, stage kinds, models and the order fold. Pure and portable: it reads
//! no files and writes none, and imports nothing from `io`, `tuning` or the app modules (a test
//! in `tests/integration/architecture.rs` checks it).

pub mod as_of;
pub mod catalog;
pub mod clv;
pub mod columns;
pub mod config;
pub mod diagnostic;
pub mod input;
pub mod manifest;
pub mod money;
pub mod options;
pub mod orders;
pub mod period;
pub mod plan;
pub mod prepare;
pub mod stages;
