//! A local directory as the archive (`kind = "dir"`): the same keys as files, created
//! whole or not at all. **Not WORM**: anyone with write access to the directory can change it.

use super::error::ArchiveError;
use super::store::to_unix;
use super::store::{sha256_b64, ArchiveStore, ListedVersion, ObjectInfo, PutResult};
use crate::durable::FileError;
use async_trait::async_trait;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// A local directory as the archive: the same keys as files. **Not WORM.**
pub struct DirStore {
    pub(super) root: PathBuf,
}

impl DirStore {
    /// The directory archive rooted at `root`.
    pub fn new(root: &Path) -> Self {
        DirStore {
            root: root.to_path_buf(),
        }
    }

    pub(super) fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }
}

pub(super) fn sync_dir(dir: &Path) -> Result<(), ArchiveError> {
    Ok(crate::durable::sync_dir(dir).map_err(FileError::on(dir))?)
}

#[async_trait]
impl ArchiveStore for DirStore {
    fn target(&self) -> String {
        format!("dir:{}", self.root.display())
    }

    fn is_worm(&self) -> bool {
        false
    }

    async fn check_ready(&self) -> Result<(), ArchiveError> {
        Ok(fs::create_dir_all(&self.root).map_err(FileError::on(&self.root))?)
    }

    async fn put_new(
        &self,
        key: &str,
        bytes: Vec<u8>,
        _sha256: &str,
        _retain_until: SystemTime,
    ) -> Result<PutResult, ArchiveError> {
        let path = self.path(key);
        let dir = path
            .parent()
            .map_or_else(|| self.root.clone(), Path::to_path_buf);
        fs::create_dir_all(&dir).map_err(FileError::on(&dir))?;
        if path.exists() {
            return Ok(PutResult::AlreadyExists);
        }
        // Create-only: a complete file appears under its name at once, or not at all.
        match crate::durable::create_new(&path, &bytes).map_err(FileError::on(&path))? {
            crate::durable::Created::Created => Ok(PutResult::Created),
            crate::durable::Created::AlreadyExists => Ok(PutResult::AlreadyExists),
        }
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>, ArchiveError> {
        let path = self.path(key);
        match fs::read(&path) {
            Ok(bytes) => Ok(Some(ObjectInfo {
                sha256: Some(sha256_b64(&bytes)),
                last_modified: fs::metadata(&path)
                    .and_then(|m| m.modified())
                    .ok()
                    .map(to_unix),
                ..ObjectInfo::default()
            })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(FileError::on(&path)(e).into()),
        }
    }

    async fn get(&self, key: &str) -> Result<Vec<u8>, ArchiveError> {
        let path = self.path(key);
        Ok(fs::read(&path).map_err(FileError::on(&path))?)
    }

    async fn get_range(&self, key: &str, start: u64, len: u64) -> Result<Vec<u8>, ArchiveError> {
        use std::os::unix::fs::FileExt;
        let path = self.path(key);
        let file = fs::File::open(&path).map_err(FileError::on(&path))?;
        let size = file.metadata().map_err(FileError::on(&path))?.len();
        let len = len.min(size.saturating_sub(start));
        let mut buf = vec![0u8; len as usize];
        file.read_exact_at(&mut buf, start)
            .map_err(FileError::on(&path))?;
        Ok(buf)
    }

    async fn list_versions(&self, prefix: &str) -> Result<Vec<ListedVersion>, ArchiveError> {
        fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) -> std::io::Result<()> {
            let entries = match fs::read_dir(dir) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(e),
            };
            for entry in entries {
                let entry = entry?;
                let path = entry.path();
                if entry.file_type()?.is_dir() {
                    walk(root, &path, out)?;
                } else if !entry.file_name().to_string_lossy().starts_with('.') {
                    if let Ok(rel) = path.strip_prefix(root) {
                        out.push(rel.to_string_lossy().replace('\\', "/"));
                    }
                }
            }
            Ok(())
        }
        let mut keys = Vec::new();
        walk(&self.root, &self.root, &mut keys).map_err(FileError::on(&self.root))?;
        keys.retain(|k| k.starts_with(prefix));
        keys.sort();
        Ok(keys
            .into_iter()
            .map(|key| ListedVersion {
                key,
                version_id: None,
                is_latest: true,
                is_delete_marker: false,
            })
            .collect())
    }
}
