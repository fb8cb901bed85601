//! One `countersign serve` per SQLite store.
//!
//! A SQLite store belongs to one process: at start it declares executions still running and sessions
//! still open as left over from a stopped gateway. A second `serve` on the same file would do that to
//! the first one's live work, so `serve` holds an exclusive lock beside the file for its whole life.
//! The operating system drops the lock when the process ends, however it ends (`kill -9` included),
//! so a restart never finds a stale one. Read-only subcommands (`requests list`, `audit verify` …)
//! don't take it.

use anyhow::{bail, Context};
use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};

/// Held while `serve` runs; dropping it releases the store.
#[derive(Debug)]
pub struct StoreLock {
    _file: Option<File>,
}

/// The database file of a `sqlite://…` store URL; `None` for other stores and in-memory databases.
fn sqlite_file(store_url: &str) -> Option<PathBuf> {
    let rest = store_url
        .strip_prefix("sqlite://")
        .or_else(|| store_url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or(rest);
    (!path.is_empty() && path != ":memory:").then(|| PathBuf::from(path))
}

/// Takes the lock of the store at `store_url` (a no-op for PostgreSQL, which several replicas share).
pub fn lock(store_url: &str) -> anyhow::Result<StoreLock> {
    let Some(db) = sqlite_file(store_url) else {
        return Ok(StoreLock { _file: None });
    };
    let lock_path = Path::new(&format!("{}.lock", db.display())).to_path_buf();
    if let Some(dir) = lock_path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the store directory {}", dir.display()))?;
    }
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("opening the store lock {}", lock_path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(StoreLock { _file: Some(file) }),
        Err(TryLockError::WouldBlock) => bail!(
            "another `countersign serve` is using the SQLite store {} (its lock {} is held): stop that one, give this one its own [store] data_dir, or run several replicas on a PostgreSQL store ([store] url = \"postgres://…\")",
            db.display(),
            lock_path.display()
        ),
        Err(TryLockError::Error(e)) => Err(e)
            .with_context(|| format!("locking the store lock {}", lock_path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_of_one_sqlite_store_is_refused_until_the_first_lets_go() {
        let dir = countersign_bot::testing::TempDir::new();
        let url = format!("sqlite://{}/state.db?mode=rwc", dir.path().display());
        let first = lock(&url).unwrap();
        let err = lock(&url).unwrap_err().to_string();
        assert!(err.contains("another `countersign serve`"), "{err}");
        assert!(err.contains("state.db"), "{err}");
        drop(first);
        lock(&url).expect("free again once the first is gone");
    }

    #[test]
    fn other_stores_need_no_lock() {
        assert_eq!(sqlite_file("postgres://u@h/db"), None);
        assert_eq!(sqlite_file("sqlite::memory:"), None);
        assert_eq!(
            sqlite_file("sqlite://./data/c.db"),
            Some(PathBuf::from("./data/c.db"))
        );
        lock("postgres://u@h/db").unwrap();
    }
}
