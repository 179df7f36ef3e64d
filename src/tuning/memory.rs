//! Process-wide memory settings (the `memory-settings` feature): freed memory kept by mimalloc,
//! and, on Linux, no transparent huge pages. They matter where the page allocator is not in use
//! (a build without it, or pages that are not 4 KiB): polars frees and re-allocates large
//! buffers all the time, and every page handed back to the kernel is faulted in and zeroed
//! again (docs/performance.md).

/// Apply both settings; the error says which could not be applied.
pub fn apply() -> Result<(), String> {
    keep_freed_memory();
    disable_huge_pages()
}

/// Keep freed memory in the process (as `MIMALLOC_PURGE_DELAY=-1` would), trading some peak
/// RSS for the faults. A `MIMALLOC_PURGE_DELAY` in the environment still decides.
fn keep_freed_memory() {
    /// `mi_option_purge_delay` in mimalloc.h (the Rust bindings do not name it).
    const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: mi_option_set only stores an option value; any value is valid for this one.
        unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, -1) };
    }
}

/// With transparent huge pages, each re-fault of a freed huge page zeroes 2 MiB.
#[cfg(target_os = "linux")]
fn disable_huge_pages() -> Result<(), String> {
    // SAFETY: prctl with PR_SET_THP_DISABLE takes integer arguments and touches no memory of ours.
    let status = unsafe {
        libc::prctl(
            libc::PR_SET_THP_DISABLE,
            1 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    if status == 0 {
        Ok(())
    } else {
        Err(format!(
            "could not disable transparent huge pages: {}",
            std::io::Error::last_os_error()
        ))
    }
}

#[cfg(not(target_os = "linux"))]
fn disable_huge_pages() -> Result<(), String> {
    Ok(())
}
