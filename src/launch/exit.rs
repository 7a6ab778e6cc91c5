//! The child's end, as an exit code: its own code, or 128 + N when signal N killed it.

use nix::sys::wait::WaitStatus;

/// `None` while the child has not ended.
pub fn code_of(status: WaitStatus) -> Option<u8> {
    match status {
        WaitStatus::Exited(_, code) => Some(u8::try_from(code & 0xff).unwrap_or(u8::MAX)),
        WaitStatus::Signaled(_, signal, _) => Some(128u8.saturating_add(signal as u8)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use nix::sys::signal::Signal;
    use nix::sys::wait::WaitStatus;
    use nix::unistd::Pid;

    #[test]
    fn codes() {
        let pid = Pid::from_raw(1);
        assert_eq!(super::code_of(WaitStatus::Exited(pid, 3)), Some(3));
        assert_eq!(
            super::code_of(WaitStatus::Signaled(pid, Signal::SIGKILL, false)),
            Some(137)
        );
        assert_eq!(super::code_of(WaitStatus::StillAlive), None);
    }
}
