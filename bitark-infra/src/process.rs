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

/// `(free, total)` bytes of the file system holding `path`, as an unprivileged process
/// may use them (`statvfs`).
pub fn disk_space(path: &std::path::Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::other("the path holds a NUL byte"))?;
    // SAFETY: an all-zero statvfs is a valid value of that plain C struct.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: statvfs reads the NUL-terminated path and writes into `stat`, on this stack.
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let block = stat.f_frsize as u64;
    Ok((stat.f_bavail as u64 * block, stat.f_blocks as u64 * block))
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
    fn the_disk_holding_a_directory_has_some_free_space_out_of_its_total() {
        let (free, total) = super::disk_space(std::path::Path::new(".")).unwrap();
        assert!(total > 0 && free <= total, "free {free} of {total}");
        assert!(super::disk_space(std::path::Path::new("/no/such/dir")).is_err());
    }

    #[test]
    fn this_process_has_a_resident_size() {
        assert!(super::resident_bytes().is_some_and(|bytes| bytes > 1 << 20));
    }
}
