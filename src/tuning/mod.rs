//! Performance tuning that earns its place (docs/performance.md): each piece is behind a cargo
//! feature of `tuning` and imports nothing of the crate. Without the feature the tool runs with
//! the same tables.

#[cfg(all(target_os = "linux", feature = "page-allocator"))]
pub mod alloc;
#[cfg(feature = "memory-settings")]
pub mod memory;
#[cfg(feature = "parallel-writer")]
pub mod parquet;
