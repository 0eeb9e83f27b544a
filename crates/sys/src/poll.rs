//! Layer: OS. `poll(2)` for readability over a few descriptors, or writability of one.
//!
//! Owns nothing but the system call: the router's blocking threads use it to wait on a TAP
//! queue and a UDP socket (or a wake-up pipe) at once, with a timeout for periodic work, and
//! the data plane to wait for room in a non-blocking socket's send queue.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::{Duration, Instant};

/// Descriptors up to this count are polled without allocating.
const STACK_FDS: usize = 8;

/// Waits until at least one of `fds` is readable, or `timeout` passes (`None`: forever).
///
/// On return `ready[i]` says whether `fds[i]` is readable (an error or hang-up condition counts
/// as readable, so that the next read reports it); the result is the number of readable
/// descriptors, `0` on timeout. `ready` must be at least as long as `fds`. `EINTR` is retried
/// with the remaining time.
pub fn wait_readable(
    fds: &[BorrowedFd<'_>],
    timeout: Option<Duration>,
    ready: &mut [bool],
) -> io::Result<usize> {
    wait(fds, libc::POLLIN, timeout, ready)
}

/// Waits until `fd` is writable (for a socket: its send queue has room again), or `timeout`
/// passes. Returns whether it is writable (an error or hang-up condition counts, so that the
/// next write reports it). `EINTR` is retried with the remaining time.
pub fn wait_writable(fd: BorrowedFd<'_>, timeout: Duration) -> io::Result<bool> {
    let mut ready = [false];
    wait(&[fd], libc::POLLOUT, Some(timeout), &mut ready)?;
    Ok(ready[0])
}

fn wait(
    fds: &[BorrowedFd<'_>],
    events: libc::c_short,
    timeout: Option<Duration>,
    ready: &mut [bool],
) -> io::Result<usize> {
    if ready.len() < fds.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "wait_readable: `ready` is shorter than `fds`",
        ));
    }
    let mut stack = [libc::pollfd {
        fd: -1,
        events: 0,
        revents: 0,
    }; STACK_FDS];
    let mut heap = Vec::new();
    let pfds: &mut [libc::pollfd] = if fds.len() <= STACK_FDS {
        &mut stack[..fds.len()]
    } else {
        heap.resize(
            fds.len(),
            libc::pollfd {
                fd: -1,
                events: 0,
                revents: 0,
            },
        );
        &mut heap
    };
    for (p, fd) in pfds.iter_mut().zip(fds) {
        p.fd = fd.as_raw_fd();
        p.events = events;
    }
    let deadline = timeout.map(|t| Instant::now() + t);
    let n = loop {
        let ms = match deadline {
            None => -1,
            Some(d) => timeout_ms(d.saturating_duration_since(Instant::now())),
        };
        // SAFETY: `pfds` is a valid, exclusively borrowed array of `pfds.len()` pollfd structs,
        // and every fd in it is borrowed (so open) for the duration of the call.
        let r = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ms) };
        if r >= 0 {
            break r;
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    };
    for (r, p) in ready.iter_mut().zip(pfds.iter()) {
        *r = p.revents & (events | libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0;
    }
    // poll returned n >= 0 here.
    Ok(n as usize)
}

/// Rounds a duration up to whole milliseconds for `poll`, saturating at `i32::MAX`.
fn timeout_ms(d: Duration) -> libc::c_int {
    let ms = d.as_millis() + u128::from(d.subsec_nanos() % 1_000_000 != 0);
    libc::c_int::try_from(ms).unwrap_or(libc::c_int::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn rounding() {
        assert_eq!(timeout_ms(Duration::ZERO), 0);
        assert_eq!(timeout_ms(Duration::from_micros(1)), 1);
        assert_eq!(timeout_ms(Duration::from_millis(5)), 5);
        assert_eq!(timeout_ms(Duration::from_secs(u64::MAX)), i32::MAX);
    }

    #[test]
    fn readable_and_timeout() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let (c, _d) = UnixStream::pair().unwrap();
        let mut ready = [true; 2];
        let n = wait_readable(
            &[a.as_fd(), c.as_fd()],
            Some(Duration::from_millis(10)),
            &mut ready,
        )
        .unwrap();
        assert_eq!(n, 0);
        assert_eq!(ready, [false, false]);
        b.write_all(b"x").unwrap();
        let n = wait_readable(&[a.as_fd(), c.as_fd()], None, &mut ready).unwrap();
        assert_eq!(n, 1);
        assert_eq!(ready, [true, false]);
        // A socket with an empty send queue is writable at once.
        assert!(wait_writable(a.as_fd(), Duration::from_millis(10)).unwrap());
        let mut short = [false; 1];
        assert!(wait_readable(&[a.as_fd(), c.as_fd()], None, &mut short).is_err());
    }
}
