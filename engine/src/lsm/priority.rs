//! Thread priorities of the store's own threads.

/// Sets the calling thread's nice value (higher: gives way sooner). Best
/// effort: on failure the thread keeps the process's priority, which only
/// makes it slower to give way, and `what` names it in the warning.
pub(crate) fn set_nice(nice: i32, what: &str) {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: gettid takes no arguments; setpriority with PRIO_PROCESS
        // and a thread id changes only that thread's nice value on Linux.
        let rc = unsafe {
            let tid = libc::gettid();
            libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice)
        };
        if rc != 0 {
            tracing::warn!(
                err = %std::io::Error::last_os_error(),
                "could not lower the priority of {what}"
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (nice, what);
}
