//! Integration tests: the real `pipeline` binary on fixtures, outputs read back with arrow-rs.

mod acquisition;
mod architecture;
mod bad_data;
mod clv;
mod clv_simple;
mod cohorts;
mod common;
mod config_errors;
mod corpus;
mod customer_facts;
mod end_to_end;
mod faults;
mod inputs;
mod lifecycle;
mod matrix;
mod nps;
mod outputs;
mod properties;
mod reference;
mod repeat;
mod report;
mod rfm;
mod shards;
mod snapshots;
mod spark;
