//! What the operating system says about this process.

/// The resident set size of this process in bytes, from `/proc/self/statm`; `None`
/// where that file does not exist.
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf only reads a system constant.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok().filter(|p| *p > 0).unwrap_or(4096))
}

/// This process's `(soft, hard)` limits on open files.
pub fn open_files_limit() -> std::io::Result<(u64, u64)> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct it is given, which lives on this stack.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((limit.rlim_cur, limit.rlim_max))
}

/// Raises this process's soft limit on open files to its hard limit (or to the kernel's
/// `fs.nr_open` when the hard limit is above it, e.g. unlimited); answers the limits in
/// force before and after, as `(soft before, (soft, hard))`.
pub fn raise_open_files_limit() -> std::io::Result<(u64, (u64, u64))> {
    let (soft, hard) = open_files_limit()?;
    let target = match std::fs::read_to_string("/proc/sys/fs/nr_open").ok().and_then(|n| n.trim().parse::<u64>().ok()) {
        Some(nr_open) => hard.min(nr_open),
        None => hard,
    };
    if soft < target {
        let raised = libc::rlimit { rlim_cur: target, rlim_max: hard };
        // SAFETY: setrlimit only reads the struct it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok((soft, open_files_limit()?))
}

#[cfg(test)]
mod tests {
    #[test]
    fn this_process_has_a_resident_size() {
        assert!(super::resident_bytes().is_some_and(|bytes| bytes > 1 << 20));
    }
}
