//! Durability for sled's blob files.
//!
//! sled 0.34.7 writes a page whose encoding passes a quarter of a segment to
//! a file of its own under `blobs/`, and `flush()` fsyncs its segment file
//! only, never those. A leaf page holds up to 17 values, so a leaf of large
//! raft entries becomes a blob even though every entry alone is well under
//! the limit, and a power loss could then take a page the log says is
//! durable. [`BlobSync`] closes that gap: before each flush it fsyncs the blob
//! files written since the last one, and the directory that names them.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::File;
use std::io::ErrorKind;
use std::path::PathBuf;
use std::sync::Mutex;

pub(crate) struct BlobSync {
    dir: PathBuf,
    /// Blob files known durable (those sled has since removed are forgotten).
    synced: Mutex<HashSet<OsString>>,
}

impl BlobSync {
    /// For the sled database at `db_path`.
    pub(crate) fn new(db_path: &std::path::Path) -> BlobSync {
        BlobSync {
            dir: db_path.join("blobs"),
            synced: Mutex::new(HashSet::new()),
        }
    }

    /// fsync every blob file not synced yet, then the directory; returns how
    /// many files were synced. Files sled removes meanwhile are skipped.
    pub(crate) fn sync_new(&self) -> std::io::Result<usize> {
        let entries = match std::fs::read_dir(&self.dir) {
            Err(err) if err.kind() == ErrorKind::NotFound => return Ok(0),
            entries => entries?,
        };
        let mut synced = self.synced.lock().unwrap_or_else(|e| e.into_inner());
        let mut present = HashSet::with_capacity(synced.len());
        let mut count = 0;
        for entry in entries {
            let name = entry?.file_name();
            if !synced.contains(&name) {
                match File::open(self.dir.join(&name)).and_then(|f| f.sync_all()) {
                    Ok(()) => count += 1,
                    Err(err) if err.kind() == ErrorKind::NotFound => continue,
                    Err(err) => return Err(err),
                }
            }
            present.insert(name);
        }
        if count > 0 {
            File::open(&self.dir)?.sync_all()?;
        }
        *synced = present;
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_blob_file_is_synced_once_and_removed_ones_are_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let sync = BlobSync::new(dir.path());
        assert_eq!(sync.sync_new().unwrap(), 0, "no blobs directory yet");
        let blobs = dir.path().join("blobs");
        std::fs::create_dir(&blobs).unwrap();
        std::fs::write(blobs.join("100"), b"a").unwrap();
        std::fs::write(blobs.join("200"), b"b").unwrap();
        assert_eq!(sync.sync_new().unwrap(), 2);
        assert_eq!(sync.sync_new().unwrap(), 0, "already synced");
        std::fs::remove_file(blobs.join("100")).unwrap();
        std::fs::write(blobs.join("300"), b"c").unwrap();
        assert_eq!(sync.sync_new().unwrap(), 1);
        assert_eq!(sync.synced.lock().unwrap().len(), 2, "100 forgotten");
    }
}
