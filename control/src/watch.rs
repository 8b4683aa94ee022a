//! Noticing that the policy file changed, by polling its metadata.
//!
//! The control thread calls [`FileWatch::changed`] every 200 ms, so a change
//! is seen well within a second, with no inotify and nothing to set up. A change
//! is a different modification time, length, or (on Unix) file identity
//! (device and inode): an editor that saves by writing a new file and
//! renaming it over the old one, or a Kubernetes ConfigMap whose symlink is
//! swapped, is noticed even if time and length happened to match (the path
//! is followed through symlinks).
//!
//! Limits: two writes of the same length within the file system's timestamp
//! granularity (a few milliseconds on Linux, more on some network file
//! systems) between two polls look like one; the second is seen only if it
//! lands after a poll. A reload that reads the file after `changed` returns
//! true always reads the latest content, so at worst a reload is one poll
//! late, never stale.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// What identifies one version of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    dev: u64,
    ino: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let (dev, ino) = {
        use std::os::unix::fs::MetadataExt;
        (m.dev(), m.ino())
    };
    #[cfg(not(unix))]
    let (dev, ino) = (0, 0);
    Some(Stamp {
        modified: m.modified().ok(),
        len: m.len(),
        dev,
        ino,
    })
}

/// Watches one file by polling (see the module documentation).
#[derive(Debug, Clone)]
pub struct FileWatch {
    path: PathBuf,
    /// The last version seen; None while the file is missing or unreadable.
    last: Option<Stamp>,
}

impl FileWatch {
    /// Starts watching `path`; its current state counts as seen, so the
    /// first [`changed`](Self::changed) is false unless it changes after
    /// this call. A file that does not exist yet is fine: its appearance
    /// counts as a change.
    pub fn new(path: impl Into<PathBuf>) -> FileWatch {
        let path = path.into();
        let last = stamp(&path);
        FileWatch { path, last }
    }

    /// The watched path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// True once for each change seen since the last call: the file's
    /// modification time, length or identity differs from the last seen. A
    /// file that disappears is not a change (the running policies stay);
    /// when it comes back, that is a change.
    pub fn changed(&mut self) -> bool {
        self.poll() == Seen::Changed
    }

    /// What happened to the file since the last call, as [`changed`](Self::changed)
    /// sees it, telling a file that disappeared from one that did not change.
    pub fn poll(&mut self) -> Seen {
        let now = stamp(&self.path);
        if now == self.last {
            return Seen::Same;
        }
        let was = std::mem::replace(&mut self.last, now);
        match (was, now) {
            (_, Some(_)) => Seen::Changed,
            (Some(_), None) => Seen::Gone,
            (None, None) => Seen::Same,
        }
    }
}

/// What [`FileWatch::poll`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    Same,
    Changed,
    /// The file was there at the last poll and is missing or unreadable now.
    Gone,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdir::TestDir;
    use std::time::Duration;

    #[test]
    fn modification_is_seen_once() {
        let dir = TestDir::new("watch-modify");
        let path = dir.join("policies.json");
        std::fs::write(&path, "{\"policies\": []}").unwrap();
        let mut w = FileWatch::new(&path);
        assert_eq!(w.path(), path);
        assert!(!w.changed());
        assert!(!w.changed());

        // A change of length.
        std::fs::write(&path, "{\"policies\": [ ]}").unwrap();
        assert!(w.changed());
        assert!(!w.changed());

        // Same length, later modification time.
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(&path, "{\"policies\": [\t]}").unwrap();
        assert!(w.changed());
        assert!(!w.changed());
    }

    #[test]
    fn disappearing_and_coming_back() {
        let dir = TestDir::new("watch-vanish");
        let path = dir.join("policies.json");
        std::fs::write(&path, "a").unwrap();
        let mut w = FileWatch::new(&path);
        assert_eq!(w.poll(), Seen::Same);
        // Gone once (not a change), and a change when it comes back.
        std::fs::remove_file(&path).unwrap();
        assert_eq!(w.poll(), Seen::Gone);
        assert_eq!(w.poll(), Seen::Same);
        std::fs::write(&path, "a").unwrap();
        assert_eq!(w.poll(), Seen::Changed);
        assert_eq!(w.poll(), Seen::Same);

        // A file missing at the start: its appearance is a change.
        let later = dir.join("later.json");
        let mut w = FileWatch::new(&later);
        assert!(!w.changed());
        std::fs::write(&later, "x").unwrap();
        assert!(w.changed());
        assert!(!w.changed());
    }

    #[test]
    fn replacing_by_rename_is_seen() {
        let dir = TestDir::new("watch-rename");
        let path = dir.join("policies.json");
        let tmp = dir.join("policies.json.tmp");
        // The new version is written first, so its time is not later than
        // the old one's, and it has the same length.
        std::fs::write(&tmp, "new").unwrap();
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(&path, "old").unwrap();
        let mut w = FileWatch::new(&path);
        std::fs::rename(&tmp, &path).unwrap();
        assert!(w.changed());
        assert!(!w.changed());
    }
}
