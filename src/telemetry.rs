//! What a run tells about itself while it runs, callable from anywhere: memory and CPU figures
//! for the debug log, progress bars on a terminal, and the test suite's injected faults. It
//! imports no other module of the crate but the allocator's free-list figure.

/// "RSS 1234 MB (anon 1200, file 34), peak 2345 MB, CPU 12.3 s user + 1.2 s sys" from
/// /proc/self, for debug logs at phase boundaries (empty where those files do not exist).
pub fn memory() -> String {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return String::new();
    };
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or("?".to_string(), |kb| (kb / 1024).to_string())
    };
    // utime and stime are fields 14 and 15 of /proc/self/stat, in clock ticks, counted after
    // the command name's closing parenthesis (where there is no /proc, no CPU figure).
    #[cfg(unix)]
    // SAFETY: sysconf takes an integer and touches no memory of ours.
    let ticks = match unsafe { libc::sysconf(libc::_SC_CLK_TCK) } {
        ticks if ticks > 0 => ticks as f64,
        _ => 100.0,
    };
    #[cfg(not(unix))]
    let ticks = 100.0;
    let cpu = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|stat| {
            let fields: Vec<u64> = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .skip(11)
                .take(2)
                .filter_map(|f| f.parse().ok())
                .collect();
            let [user, sys] = fields[..] else { return None };
            Some(format!(
                ", CPU {:.2} s user + {:.2} s sys",
                user as f64 / ticks,
                sys as f64 / ticks
            ))
        })
        .unwrap_or_default();
    format!(
        "RSS {} MB (anon {}, file {}, free list {}), peak {} MB{cpu}",
        field("VmRSS:"),
        field("RssAnon:"),
        field("RssFile:"),
        free_list_bytes() >> 20,
        field("VmHWM:")
    )
}

/// A bar on stderr counting `what` (hidden when stderr is not a terminal, as in scheduled runs).
/// Give freed memory back to the kernel: the page-keeping allocator's free ranges and
/// mimalloc's (a bounded-memory run, between shards). Without the allocator, nothing to do.
pub fn release_freed_memory() {
    #[cfg(all(target_os = "linux", feature = "page-allocator"))]
    {
        let released = crate::tuning::alloc::release_free();
        tracing::trace!("released {} MB of freed memory", released >> 20);
    }
}

/// Bytes the page-keeping allocator holds free (0 without it).
fn free_list_bytes() -> usize {
    #[cfg(all(target_os = "linux", feature = "page-allocator"))]
    return crate::tuning::alloc::free_bytes();
    #[cfg(not(all(target_os = "linux", feature = "page-allocator")))]
    0
}

/// The test suite's way to prove that a panic becomes a clean failure: with
/// `PIPELINE_INJECT_PANIC=NAME` in the environment, the stage (or source scan) NAME panics.
pub fn inject_fault(name: &str) {
    if std::env::var_os("PIPELINE_INJECT_PANIC").is_some_and(|target| target == name) {
        panic!("injected panic in `{name}` (PIPELINE_INJECT_PANIC)");
    }
}

/// A bar on stderr counting `what` (hidden when stderr is not a terminal, as in scheduled runs).
pub fn progress_bar(total: u64, what: &str) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(&format!(
            "{{spinner}} {what} {{human_pos}}/{{human_len}} [{{elapsed_precise}}] {{wide_bar}}"
        ))
        .expect("the progress template is valid"),
    );
    bar
}
