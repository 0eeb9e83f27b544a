//! Layer: OS. How the kernel schedules the calling thread.

use std::io;

/// The highest `SCHED_FIFO` priority Linux accepts.
pub const MAX_REALTIME_PRIORITY: u8 = 99;

/// Puts the calling thread (not the whole process) on the `SCHED_FIFO` real-time policy with
/// `priority` (1 to [`MAX_REALTIME_PRIORITY`]): it then runs whenever it is ready, ahead of every
/// ordinary thread, until it blocks; the kernel still keeps 5 % of each second for ordinary
/// threads (`sched_rt_runtime_us`). Needs `CAP_SYS_NICE` (root has it).
pub fn set_realtime(priority: u8) -> io::Result<()> {
    if priority == 0 || priority > MAX_REALTIME_PRIORITY {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("real-time priority {priority} is outside 1-{MAX_REALTIME_PRIORITY}"),
        ));
    }
    // SAFETY: sched_param is plain integer data (musl's has more fields than glibc's); all-zero
    // is a valid value.
    let mut param: libc::sched_param = unsafe { std::mem::zeroed() };
    param.sched_priority = libc::c_int::from(priority);
    // SAFETY: `param` is a valid sched_param that outlives the call; pid 0 names the calling
    // thread, and the kernel only reads the struct.
    let r = unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priorities_outside_the_range_are_refused_before_the_kernel() {
        for p in [0, 100, 255] {
            let e = set_realtime(p).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{p}: {e}");
        }
    }
}
