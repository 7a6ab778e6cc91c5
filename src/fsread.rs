//! Reading files secret-run does not control (the manifest, a `.env`, mounted secret files):
//! opened once without blocking, checked by what was opened (not by name), read up to a size
//! limit and within a deadline. A FIFO swapped in cannot hang a run, `/dev/zero` cannot fill
//! memory, and a symlink swapped in between a check and an open cannot redirect the read.
//! Also the one atomic replacement of a file (the cache, `put` to a file or a `.env`).

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::stat::Mode;
use secrecy::zeroize::Zeroizing;

use crate::secret::SecretError;

/// The largest manifest read: far more than any real one (10,000 secrets take about 400 KB).
pub const MAX_MANIFEST: usize = 4 << 20;
/// The largest `.env` read.
pub const MAX_DOTENV: usize = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("it is larger than {limit} bytes, the most secret-run reads from such a file")]
    TooLarge { limit: usize },
    #[error(
        "it gave no end of file within the deadline (--timeout): a FIFO with no writer, or a hung filesystem"
    )]
    TimedOut,
    #[error("it is {0}, not a regular file")]
    NotAccepted(&'static str),
    #[error("it resolves outside {}: a symlink points out of the directory", .0.display())]
    Outside(PathBuf),
}

impl ReadError {
    pub fn io_kind(&self) -> Option<io::ErrorKind> {
        match self {
            ReadError::Io(e) => Some(e.kind()),
            _ => None,
        }
    }

    /// The error of a backend that read `what` (a `.env` file, a mounted secret): the OS's
    /// reason classified as `from_io` does, a symlink out of the directory as a refusal, the
    /// deadline as an outage, and a file of the wrong kind or size as an unusable value.
    pub fn into_secret_error(self, what: &str) -> SecretError {
        match self {
            ReadError::Io(e) => SecretError::from_io(what, e),
            ReadError::Outside(_) => SecretError::denied(format!("cannot read {what}: {self}")),
            ReadError::TimedOut => SecretError::unavailable(format!("cannot read {what}: {self}")),
            ReadError::TooLarge { .. } | ReadError::NotAccepted(_) => {
                SecretError::invalid(format!("cannot read {what}: {self}"))
            }
        }
    }
}

/// Waits until one of `fds` is readable; `false` when `deadline` passed first (`None`: no
/// deadline). A signal interrupting the wait only restarts it.
pub fn wait_readable(fds: &mut [PollFd<'_>], deadline: Option<Instant>) -> nix::Result<bool> {
    loop {
        let timeout = match deadline {
            None => PollTimeout::NONE,
            Some(d) => PollTimeout::try_from(d.saturating_duration_since(Instant::now()))
                .unwrap_or(PollTimeout::MAX),
        };
        match poll(fds, timeout) {
            Ok(0) => return Ok(false),
            Ok(_) => return Ok(true),
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
}

/// What kinds of file a read accepts besides regular files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accept {
    /// Regular files only (mounted secrets, whose writers are never streams).
    Regular,
    /// Also FIFOs and character devices: a `.env` that 1Password Environments serves through a
    /// FIFO, `/dev/null`. They are polled, so that the deadline holds.
    Streams,
}

/// Opens `path` without blocking (a FIFO's open would wait for a writer) and reads it whole.
pub fn read_path(
    path: &Path,
    accept: Accept,
    limit: usize,
    deadline: Instant,
) -> Result<Zeroizing<Vec<u8>>, ReadError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_NOCTTY)
        .open(path)?;
    read_file(file, accept, limit, deadline)
}

/// Opens `rel` inside the directory `dir` (symlinks followed only as long as they stay inside)
/// and reads it whole. The directory's own path may hold symlinks (Kubernetes' `..data`).
pub fn read_beneath(
    dir: &Path,
    rel: &str,
    limit: usize,
    deadline: Instant,
) -> Result<Zeroizing<Vec<u8>>, ReadError> {
    let file = open_beneath(dir, rel)?;
    read_file(file, Accept::Regular, limit, deadline)
}

fn open_beneath(dir: &Path, rel: &str) -> Result<File, ReadError> {
    let flags = OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOCTTY | OFlag::O_CLOEXEC;
    let root = File::open(dir)?;
    let how = OpenHow::new()
        .flags(flags)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    match openat2(root.as_fd(), rel, how) {
        Ok(fd) => Ok(File::from(fd)),
        // EXDEV: a component (a symlink, `..`) leads out of the directory.
        Err(nix::errno::Errno::EXDEV) => Err(ReadError::Outside(dir.to_path_buf())),
        // Before Linux 5.6, or a seccomp filter that does not know openat2: open, then check
        // where what was opened lives, by the descriptor (not by name: no window to swap).
        Err(nix::errno::Errno::ENOSYS | nix::errno::Errno::EPERM) => {
            open_then_check(dir, rel, flags)
        }
        Err(e) => Err(ReadError::Io(e.into())),
    }
}

/// The fallback of `open_beneath`: the opened descriptor's own path (`/proc/self/fd/N`) must
/// be inside the directory's real path.
fn open_then_check(dir: &Path, rel: &str, flags: OFlag) -> Result<File, ReadError> {
    let root = dir.canonicalize()?;
    let fd: OwnedFd = nix::fcntl::open(&dir.join(rel), flags, Mode::empty())
        .map_err(|e| ReadError::Io(e.into()))?;
    let file = File::from(fd);
    let real = std::fs::read_link(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&file)
    ))?;
    if !real.starts_with(&root) {
        return Err(ReadError::Outside(dir.to_path_buf()));
    }
    Ok(file)
}

/// Reads an opened file whole, after checking what it is.
fn read_file(
    mut file: File,
    accept: Accept,
    limit: usize,
    deadline: Instant,
) -> Result<Zeroizing<Vec<u8>>, ReadError> {
    let meta = file.metadata()?;
    let kind = meta.file_type();
    let stream = kind.is_fifo() || kind.is_char_device();
    let accepted = kind.is_file() || (stream && accept == Accept::Streams);
    if !accepted {
        return Err(ReadError::NotAccepted(describe(&kind)));
    }
    if kind.is_file() && meta.len() > limit as u64 {
        return Err(ReadError::TooLarge { limit });
    }
    // A regular file's size is known: one allocation, never moved (a moved buffer would leave
    // its old copy behind unzeroed). A stream grows through `append`, which zeroes as it goes.
    let expected = if kind.is_file() {
        meta.len() as usize + 1
    } else {
        8192
    };
    let mut bytes = Zeroizing::new(Vec::with_capacity(expected.min(limit + 1)));
    let mut chunk = Zeroizing::new([0u8; 8192]);
    loop {
        if stream {
            let mut fds = [PollFd::new(file.as_fd(), PollFlags::POLLIN)];
            if !wait_readable(&mut fds, Some(deadline)).map_err(|e| ReadError::Io(e.into()))? {
                return Err(ReadError::TimedOut);
            }
        } else if Instant::now() >= deadline {
            return Err(ReadError::TimedOut);
        }
        match file.read(&mut chunk[..]) {
            Ok(0) => return Ok(bytes),
            Ok(n) => {
                if bytes.len() + n > limit {
                    return Err(ReadError::TooLarge { limit });
                }
                append(&mut bytes, &chunk[..n]);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(ReadError::Io(e)),
        }
    }
}

/// Appends without leaving a copy behind: when the buffer must grow, the bytes move to a new
/// one and the old one is zeroed as it is dropped (`Vec`'s own growth would free it as it is).
fn append(bytes: &mut Zeroizing<Vec<u8>>, data: &[u8]) {
    if bytes.capacity() - bytes.len() < data.len() {
        let wanted = (bytes.len() + data.len()).max(bytes.capacity() * 2);
        let mut bigger = Zeroizing::new(Vec::with_capacity(wanted));
        bigger.extend_from_slice(bytes);
        *bytes = bigger;
    }
    bytes.extend_from_slice(data);
}

fn describe(kind: &std::fs::FileType) -> &'static str {
    if kind.is_dir() {
        "a directory"
    } else if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_char_device() {
        "a character device"
    } else if kind.is_block_device() {
        "a block device"
    } else if kind.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

/// Replaces `path` with `bytes` so that a reader sees the old content or the new, never a part:
/// a temporary file beside it (created exclusively with `mode`, never through a symlink), fsync,
/// rename, fsync of the directory (created 0700 when missing).
pub fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".into());
    let tmp = dir.join(format!(
        ".{name}.{}.{:x}.tmp",
        std::process::id(),
        fastrand::u64(..)
    ));
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(&dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    #[test]
    fn fallback_check_refuses_a_symlink_out() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("x"), "out").unwrap();
        std::fs::write(dir.path().join("in"), "in").unwrap();
        std::os::unix::fs::symlink(outside.path().join("x"), dir.path().join("link")).unwrap();
        let flags = OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
        assert!(matches!(
            open_then_check(dir.path(), "link", flags),
            Err(ReadError::Outside(_))
        ));
        assert!(open_then_check(dir.path(), "in", flags).is_ok());
        assert!(matches!(
            read_beneath(dir.path(), "link", 100, soon()),
            Err(ReadError::Outside(_))
        ));
        assert_eq!(
            read_beneath(dir.path(), "in", 100, soon())
                .unwrap()
                .as_slice(),
            b"in"
        );
    }

    #[test]
    fn limits_hold_for_devices_and_fifos() {
        let zero = read_path(Path::new("/dev/zero"), Accept::Streams, 1000, soon());
        assert!(matches!(zero, Err(ReadError::TooLarge { limit: 1000 })));
        let null = read_path(Path::new("/dev/null"), Accept::Streams, 1000, soon()).unwrap();
        assert!(null.is_empty());
        assert!(matches!(
            read_path(Path::new("/dev/null"), Accept::Regular, 1000, soon()),
            Err(ReadError::NotAccepted("a character device"))
        ));
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, Mode::from_bits_truncate(0o600)).unwrap();
        let started = Instant::now();
        let r = read_path(
            &fifo,
            Accept::Streams,
            1000,
            Instant::now() + Duration::from_millis(200),
        );
        assert!(matches!(r, Err(ReadError::TimedOut)), "{r:?}");
        assert!(started.elapsed() < Duration::from_secs(3));
    }
}
