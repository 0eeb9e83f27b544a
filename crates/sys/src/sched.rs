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

/// Sets the nice value of the calling thread (not the whole process: on Linux, `setpriority`
/// with a thread id names one thread), -20 (most favoured) to 19. A thread with a lower value
/// gets a larger share of a busy core and, waking up, runs sooner. Lowering it below 0 needs
/// `CAP_SYS_NICE` (root has it).
pub fn set_nice(nice: i32) -> io::Result<()> {
    if !(-20..=19).contains(&nice) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("nice value {nice} is outside -20-19"),
        ));
    }
    // SAFETY: gettid has no arguments and cannot fail.
    let tid = unsafe { libc::gettid() };
    // SAFETY: plain integer arguments; the kernel changes the thread's priority or fails.
    let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice) };
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
        for n in [-21, 20] {
            let e = set_nice(n).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{n}: {e}");
        }
    }

    #[test]
    fn set_nice_changes_only_the_calling_thread() {
        let before = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
        let nice_of = |stat: &str| -> i64 {
            // Field 19 (nice), counted after the command name's closing parenthesis.
            let rest = stat.rsplit_once(')').unwrap().1;
            rest.split_whitespace().nth(16).unwrap().parse().unwrap()
        };
        let mine = nice_of(&before);
        let other = std::thread::spawn(move || {
            // Raising the value needs no privilege.
            set_nice(19).unwrap();
            nice_of(&std::fs::read_to_string("/proc/thread-self/stat").unwrap())
        })
        .join()
        .unwrap();
        assert_eq!(other, 19);
        let after = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
        assert_eq!(
            nice_of(&after),
            mine,
            "the calling thread's own is unchanged"
        );
    }
}
