//! The page-cache keeper: model files stay in RAM so that a model swapped out of the GPU
//! reloads from memory, not from disk.
//!
//! Each configured model file is memory-mapped (read-only, shared: mapping a file costs
//! address space, not memory). `mincore(2)` tells how much of it is resident; after an
//! unload, `madvise(MADV_WILLNEED)` asks the kernel to keep or bring back its pages; and
//! within `[memory] pin_ram` the files can be locked (`mlock`), never beyond that budget.

use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use serde::Serialize;

/// One mapped model file.
pub struct MappedFile {
    pub path: PathBuf,
    map: Option<Mmap>,
    locked: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Residency {
    /// Bytes of the file in the page cache.
    pub resident_bytes: u64,
    pub file_bytes: u64,
    /// Locked in RAM within `pin_ram`.
    pub locked: bool,
}

impl Residency {
    /// Whether a load would read (nearly) nothing from disk.
    pub fn warm(&self) -> bool {
        self.file_bytes > 0 && self.resident_bytes * 10 >= self.file_bytes * 9
    }

    pub fn combine(self, other: Residency) -> Residency {
        Residency {
            resident_bytes: self.resident_bytes + other.resident_bytes,
            file_bytes: self.file_bytes + other.file_bytes,
            locked: self.locked || other.locked,
        }
    }
}

impl MappedFile {
    /// Maps `path`; an empty or unreadable file maps to nothing (residency 0).
    pub fn open(path: &Path) -> MappedFile {
        let map = File::open(path).ok().and_then(|f| {
            // SAFETY: read-only shared mapping; vramd never writes through it, and a file
            // changed underneath only changes what mincore reports.
            unsafe { Mmap::map(&f) }.ok()
        });
        MappedFile {
            path: path.to_owned(),
            map: map.filter(|m| !m.is_empty()),
            locked: false,
        }
    }

    pub fn len(&self) -> u64 {
        self.map.as_ref().map_or(0, |m| m.len() as u64)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How much of the file is in the page cache now.
    pub fn residency(&self) -> Residency {
        let Some(map) = &self.map else {
            return Residency::default();
        };
        let page = page_size();
        let pages = map.len().div_ceil(page);
        let mut vec = vec![0u8; pages];
        // SAFETY: the range is exactly our mapping, and `vec` has one byte per page.
        let rc = unsafe { libc::mincore(map.as_ptr() as *mut libc::c_void, map.len(), vec.as_mut_ptr()) };
        if rc != 0 {
            return Residency::default();
        }
        let resident_pages = vec.iter().filter(|b| **b & 1 == 1).count();
        Residency {
            resident_bytes: (resident_pages * page).min(map.len()) as u64,
            file_bytes: map.len() as u64,
            locked: self.locked,
        }
    }

    /// Asks the kernel to keep (or read back) the file's pages.
    pub fn will_need(&self) {
        if let Some(map) = &self.map {
            if let Err(e) = map.advise(memmap2::Advice::WillNeed) {
                tracing::debug!(path = %self.path.display(), "madvise(WILLNEED) failed: {e}");
            }
        }
    }

    /// Locks the file in RAM. Fails (and leaves it unlocked) without the privilege or above
    /// `RLIMIT_MEMLOCK`; the caller keeps the `pin_ram` budget.
    pub fn lock(&mut self) -> std::io::Result<()> {
        if let Some(map) = &self.map {
            if !self.locked {
                map.lock()?;
                self.locked = true;
            }
        }
        Ok(())
    }

    pub fn unlock(&mut self) {
        if let Some(map) = &self.map {
            if self.locked && map.unlock().is_ok() {
                self.locked = false;
            }
        }
    }
}

/// Drops a file's pages from the page cache (`POSIX_FADV_DONTNEED`), for cold-start benchmarks.
pub fn drop_from_cache(path: &Path) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let f = File::open(path)?;
    // SAFETY: plain fadvise on an open fd.
    let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if rc != 0 {
        return Err(std::io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

fn page_size() -> usize {
    // SAFETY: sysconf has no memory effects.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as usize
    } else {
        4096
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn residency_follows_reads_and_drops() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.bin");
        std::fs::write(&path, vec![7u8; 4 << 20]).unwrap();
        let f = MappedFile::open(&path);
        assert_eq!(f.len(), 4 << 20);
        // Just written: in the page cache.
        let r = f.residency();
        assert_eq!(r.file_bytes, 4 << 20);
        // Dropping clean pages works on most filesystems; tmpfs keeps them (it is RAM).
        std::process::Command::new("sync").status().ok();
        drop_from_cache(&path).unwrap();
        let dropped = f.residency();
        f.will_need();
        std::thread::sleep(std::time::Duration::from_millis(100));
        let back = f.residency();
        assert!(back.resident_bytes >= dropped.resident_bytes);
        let _ = std::fs::read(&path).unwrap();
        assert!(f.residency().warm(), "a file just read is in the page cache");
        assert!(MappedFile::open(&dir.path().join("missing")).is_empty());
    }
}
