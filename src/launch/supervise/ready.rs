//! Readiness probes for `on_change = "overlap"`: one attempt each, which the policy repeats
//! until the new child is ready or `ready.timeout` has passed.

use std::time::Duration;

use crate::manifest::run::Ready;

/// How long one TCP attempt may take.
const TCP_ATTEMPT: Duration = Duration::from_secs(1);
/// How long one run of the readiness program may take.
const CMD_ATTEMPT: Duration = Duration::from_secs(5);

/// One attempt: a TCP connection that succeeds, or the program exiting 0 (it gets the new
/// child's PID in `SECRET_RUN_CHILD_PID`, to ask that child and no other).
pub async fn probe(ready: &Ready, child: nix::unistd::Pid) -> bool {
    if let Some(addr) = &ready.tcp {
        matches!(
            tokio::time::timeout(TCP_ATTEMPT, tokio::net::TcpStream::connect(addr.as_str())).await,
            Ok(Ok(_))
        )
    } else if let Some((program, args)) = ready.cmd.as_ref().and_then(|c| c.split_first()) {
        let status = tokio::process::Command::new(program)
            .args(args)
            .env("SECRET_RUN_CHILD_PID", child.as_raw().to_string())
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .status();
        matches!(tokio::time::timeout(CMD_ATTEMPT, status).await, Ok(Ok(s)) if s.success())
    } else {
        true
    }
}
