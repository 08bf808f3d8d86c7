//! A temporary folder that removes itself: one guard for every test and
//! harness of the workspace, with the standard library only.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Names tried before giving up when each one is taken already (only
/// another process reusing this one's id could take them).
const NAME_ATTEMPTS: u32 = 100;

/// Folders made by this process so far: part of each name, so that two
/// guards of one process never collide.
static MADE: AtomicU64 = AtomicU64::new(0);

/// A fresh folder under [`std::env::temp_dir`], removed with all it holds
/// when the guard is dropped, also when a test panics (unwinding drops it).
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates `pza-<tag>-<pid>-<n>-<nanos>` under the system temp folder.
    /// The folder is created here, not found: a name already taken is never
    /// shared, another one is tried. An error names the folder.
    pub fn new(tag: &str) -> std::io::Result<TempDir> {
        let root = std::env::temp_dir();
        let mut last_error = None;
        for _ in 0..NAME_ATTEMPTS {
            let n = MADE.fetch_add(1, Ordering::Relaxed);
            // The clock only adds uniqueness across processes with a reused
            // pid; a clock before 1970 is no reason to fail.
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or_default();
            let path = root.join(format!("pza-{tag}-{}-{n}-{nanos:08x}", std::process::id()));
            match std::fs::create_dir(&path) {
                Ok(()) => return Ok(TempDir { path }),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    last_error = Some(creating(&path, e));
                }
                Err(e) => return Err(creating(&path, e)),
            }
        }
        Err(last_error.unwrap_or_else(|| std::io::Error::other("no free temp folder name")))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A path inside the folder.
    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.path.join(name)
    }
}

/// `e`, saying which folder could not be created.
fn creating(path: &Path, e: std::io::Error) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("creating {}: {e}", path.display()))
}

impl AsRef<Path> for TempDir {
    fn as_ref(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // Nothing to report to: a folder that cannot be removed (already
        // gone, or a file in it still open on Windows) is left to the system.
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_guard_has_its_own_folder_removed_on_drop() {
        let a = TempDir::new("temp-test").expect("a temp folder");
        let b = TempDir::new("temp-test").expect("another temp folder");
        assert_ne!(a.path(), b.path());
        assert!(a.path().starts_with(std::env::temp_dir()));
        std::fs::create_dir(a.join("sub")).expect("a sub-folder");
        std::fs::write(a.join("sub/file"), "x").expect("a file in it");
        let path = a.path().to_path_buf();
        drop(a);
        assert!(!path.exists(), "{} left behind", path.display());
        assert!(b.path().is_dir());
    }

    #[test]
    fn the_folder_is_removed_when_a_test_panics() {
        let mut path = PathBuf::new();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let dir = TempDir::new("temp-panic").expect("a temp folder");
            path = dir.path().to_path_buf();
            std::fs::write(dir.join("file"), "x").expect("a file in it");
            panic!("the test fails");
        }));
        assert!(outcome.is_err());
        assert!(!path.as_os_str().is_empty() && !path.exists());
    }
}
