//! Files that survive a crash whole or not at all.
//!
//! Owns the three steps every durable file in the journal directory and the directory archive
//! goes through: write a temporary file and fsync it, give it its final name, fsync the
//! directory. After a crash at any point the final name holds either the old complete file (or
//! nothing) or the new complete file, never a torn one. Plain `std::io` results; [`FileError`]
//! is how every stage's error type says which file an I/O error was on. Every file and
//! directory made here ([`private_file`], [`private_dir_all`]) is its owner's alone (0600,
//! 0700): the journal, its checkpoints and state files are PHI.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// An I/O error on a named file: what the `Io` variant of the journal's, the archive's and the
/// checkpoints' error types carries, so that the file is named once, here.
#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", path.display())]
pub struct FileError {
    /// The file (or directory).
    pub path: PathBuf,
    /// What the operating system said.
    #[source]
    pub source: io::Error,
}

impl FileError {
    /// For `map_err(FileError::on(path))?`: an I/O error on `path`.
    pub fn on(path: &Path) -> impl FnOnce(io::Error) -> FileError + '_ {
        move |source| FileError {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// fsync a directory, so that names created, renamed or removed in it survive power loss.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir).and_then(|d| d.sync_all())
}

/// The directory a file's name lives in (`.` for a bare name).
fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Open `path` for writing, created (or truncated) readable and writable by its owner only
/// (mode 0600 on Unix). `new`: fail if it exists.
pub fn private_file(path: &Path, new: bool) -> io::Result<File> {
    let mut options = fs::OpenOptions::new();
    options.write(true);
    if new {
        options.create_new(true);
    } else {
        options.create(true).truncate(true);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)
}

/// Create `dir` and its missing parents, each new one its owner's only (0700 on Unix).
pub fn private_dir_all(dir: &Path) -> io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)
}

/// Write `bytes` to `tmp`, fsync'd.
fn write_synced(tmp: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = private_file(tmp, false)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Replace `path` with `bytes`: temp file (`path` with the extension `tmp`), fsync, rename,
/// fsync the directory.
pub fn replace(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    write_synced(&tmp, bytes)?;
    install(&tmp, path)
}

/// Give the complete, synced `tmp` the name `path`, durably.
fn install(tmp: &Path, path: &Path) -> io::Result<()> {
    // Crash point: the temp file is complete but has no final name; the next write replaces it.
    fs::rename(tmp, path)?;
    // Crash point: renamed, directory not synced: after power loss the old or the new file is
    // found under the name; either is complete.
    sync_dir(parent_of(path))
}

/// [`replace`] for a large file written in the background: the bytes go to disk `chunk` at
/// a time, each chunk's writeback started as it is written and waited for before the next
/// one is, so that at most two chunks of it are ever queued at the disk. A journal's
/// `fdatasync` then never waits behind megabytes of this file, as it would behind one fsync
/// of the whole (the disk serves writes in the order they come). The end result, and every
/// crash point, are [`replace`]'s.
pub fn replace_paced(path: &Path, bytes: &[u8], chunk: usize) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = private_file(&tmp, false)?;
    let chunk = chunk.max(4096);
    let mut previous: Option<(usize, usize)> = None;
    for (i, piece) in bytes.chunks(chunk).enumerate() {
        file.write_all(piece)?;
        let offset = i * chunk;
        start_writeback(&file, offset, piece.len(), false)?;
        if let Some((offset, len)) = previous {
            start_writeback(&file, offset, len, true)?;
        }
        previous = Some((offset, piece.len()));
    }
    file.sync_all()?;
    drop(file);
    install(&tmp, path)
}

/// Start writing `len` bytes of `file` at `offset` back to disk, and with `wait`, wait until
/// they are written (Linux `sync_file_range`; it makes nothing durable by itself: the caller
/// still fsyncs). Elsewhere a no-op: the caller's fsync writes everything.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)] // sync_file_range has no safe wrapper in std.
fn start_writeback(file: &File, offset: usize, len: usize, wait: bool) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let flags = if wait {
        libc::SYNC_FILE_RANGE_WAIT_BEFORE
            | libc::SYNC_FILE_RANGE_WRITE
            | libc::SYNC_FILE_RANGE_WAIT_AFTER
    } else {
        libc::SYNC_FILE_RANGE_WRITE
    };
    // SAFETY: the descriptor is open for the call (borrowed from `file`); the other arguments
    // are integers.
    let done = unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            flags,
        )
    };
    if done == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_file: &File, _offset: usize, _len: usize, _wait: bool) -> io::Result<()> {
    Ok(())
}

/// What [`create_new`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    /// The file did not exist and now holds the bytes, durably.
    Created,
    /// A file of that name already existed; it was left as it was.
    AlreadyExists,
}

/// Create `path` holding `bytes` unless it exists: temp file (`.NAME.tmp` beside it), fsync,
/// hard link to the final name (which fails if the name exists, so a complete file appears
/// under its name at once or not at all), fsync the directory.
pub fn create_new(path: &Path, bytes: &[u8]) -> io::Result<Created> {
    let dir = parent_of(path);
    let tmp: PathBuf = dir.join(format!(
        ".{}.tmp",
        path.file_name().unwrap_or_default().to_string_lossy()
    ));
    write_synced(&tmp, bytes)?;
    // Crash point: a complete temp file, no final name; it is ignored and overwritten later.
    let linked = fs::hard_link(&tmp, path);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            sync_dir(dir)?;
            Ok(Created::Created)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(Created::AlreadyExists),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(unix)]
    fn files_and_directories_made_here_are_their_owners_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("a/b");
        private_dir_all(&sub).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&sub), 0o700);
        assert_eq!(mode(&dir.path().join("a")), 0o700);
        replace(&sub.join("state.json"), b"x").unwrap();
        assert_eq!(mode(&sub.join("state.json")), 0o600);
        create_new(&sub.join("seg"), b"y").unwrap();
        assert_eq!(mode(&sub.join("seg")), 0o600);
    }

    #[test]
    fn replace_writes_and_overwrites_whole_files_without_leaving_a_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        replace(&path, b"one").unwrap();
        replace(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert!(!path.with_extension("tmp").exists());
    }

    #[test]
    fn replace_paced_writes_the_same_file_in_pieces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("copy.parquet");
        let bytes: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        replace_paced(&path, b"old", 4096).unwrap();
        for chunk in [4096, 8192, 1 << 20] {
            replace_paced(&path, &bytes, chunk).unwrap();
            assert_eq!(fs::read(&path).unwrap(), bytes, "chunk {chunk}");
        }
        replace_paced(&path, b"", 4096).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"");
        assert!(!path.with_extension("tmp").exists());
    }

    #[test]
    fn create_new_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seg.jsonl.zst");
        assert_eq!(create_new(&path, b"first").unwrap(), Created::Created);
        assert_eq!(
            create_new(&path, b"second").unwrap(),
            Created::AlreadyExists
        );
        assert_eq!(fs::read(&path).unwrap(), b"first");
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "no temp file is left behind");
    }

    #[test]
    fn errors_are_returned_not_swallowed() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no/such/dir/file");
        assert!(replace(&missing, b"x").is_err());
        assert!(create_new(&missing, b"x").is_err());
        assert!(replace_paced(&missing, b"x", 4096).is_err());
    }
}
