//! Noticing that the policy file changed, by polling its metadata.
//!
//! The control thread calls [`FileWatch::poll`] every 200 ms. A change is a different
//! modification time, status-change time, length, or (on Unix) file identity (device and
//! inode): an editor that saves by writing a new file and renaming it over the old one, or
//! a Kubernetes ConfigMap whose symlink is swapped, is noticed even if time and length
//! happened to match (the path is followed through symlinks). While the file's times are
//! within [`RACY`] of the clock, two writes of the same length could share them (a file
//! system's timestamps are coarse: a few milliseconds on Linux, seconds on some), so the
//! watch also compares a digest of the content until they are older.
//!
//! A change is reported once the file has stayed the same for a poll
//! ([`Seen::Changing`], then [`Seen::Changed`]), so that a file still being written is
//! not read half-way. A writer that stops for longer than a poll in the middle of the file
//! can still be read half-way (an invalid file, counted as a failed reload; the complete
//! file is loaded when the writer is done): a new version is best written beside the old
//! one and renamed over it.
//!
//! Whoever reloads the file otherwise (a signal, an HTTP request) calls
//! [`FileWatch::mark_seen`] before reading it, so that the same change is not loaded
//! twice; a change after that is seen at the next poll.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// How recent a file's times must be for its content to be compared too.
pub const RACY: Duration = Duration::from_secs(2);

/// What identifies one version of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    /// The status-change time (seconds, nanoseconds): any write or `touch` moves it,
    /// even one that puts the modification time back.
    changed: (i64, i64),
    len: u64,
    dev: u64,
    ino: u64,
}

impl Stamp {
    /// Whether a write in the same tick of the file system's clock could share this stamp:
    /// a time within `racy` of `now`, or later than `now`.
    fn is_racy(&self, now: SystemTime, racy: Duration) -> bool {
        let changed = SystemTime::UNIX_EPOCH
            .checked_add(Duration::new(
                self.changed.0.max(0) as u64,
                self.changed.1.clamp(0, 999_999_999) as u32,
            ))
            .unwrap_or(now);
        [self.modified.unwrap_or(now), changed]
            .iter()
            .any(|&t| now.duration_since(t).is_ok_and(|age| age < racy) || t > now)
    }
}

fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let (dev, ino, changed) = {
        use std::os::unix::fs::MetadataExt;
        (m.dev(), m.ino(), (m.ctime(), m.ctime_nsec()))
    };
    #[cfg(not(unix))]
    let (dev, ino, changed) = (0, 0, (0, 0));
    Some(Stamp {
        modified: m.modified().ok(),
        changed,
        len: m.len(),
        dev,
        ino,
    })
}

/// A digest of the file's content (None if it cannot be read as a regular file).
fn digest(path: &Path) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let bytes = crate::read_bounded(path, crate::MAX_FILE_LEN).ok()?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    Some(h.finish())
}

/// Watches one file by polling (see the module documentation).
#[derive(Debug, Clone)]
pub struct FileWatch {
    path: PathBuf,
    /// The last version seen; None while the file is missing or unreadable.
    last: Option<Stamp>,
    /// Its content's digest while its times are racy ([`RACY`]), or were at the last look.
    digest: Option<u64>,
    /// Whether the file's times were racy at the last look.
    was_racy: bool,
    /// A change was seen at the last poll; it is reported once the file stays the same.
    settling: bool,
    /// [`RACY`] (shorter in tests).
    racy: Duration,
}

/// One look at the file.
struct Look {
    stamp: Option<Stamp>,
    racy: bool,
    /// Its content's digest, if it was read (while its times are racy, or were at the
    /// last look) and could be.
    digest: Option<u64>,
    /// Whether the digest was wanted (a failed read keeps the last one).
    wanted: bool,
}

impl FileWatch {
    /// Starts watching `path`; its current state counts as seen, so the first
    /// [`poll`](Self::poll) sees nothing unless it changes after this call. A file that
    /// does not exist yet is fine: its appearance counts as a change.
    pub fn new(path: impl Into<PathBuf>) -> FileWatch {
        let mut w = FileWatch {
            path: path.into(),
            last: None,
            digest: None,
            was_racy: false,
            settling: false,
            racy: RACY,
        };
        w.mark_seen();
        w
    }

    /// The watched path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file as it is now, with its digest while that is needed.
    fn look(&self) -> Look {
        let stamp = stamp(&self.path);
        let racy = stamp.is_some_and(|s| s.is_racy(SystemTime::now(), self.racy));
        // Also once after the times stop being racy: a write just after the last look may
        // share its times.
        let wanted = racy || self.was_racy;
        Look {
            stamp,
            racy,
            digest: wanted.then(|| digest(&self.path)).flatten(),
            wanted,
        }
    }

    /// Remembers what `look` saw of the content.
    fn note(&mut self, look: &Look) {
        self.was_racy = look.racy;
        match look.digest {
            Some(d) => self.digest = Some(d),
            // A read that failed tells nothing: the last digest stands.
            None if look.wanted => {}
            None => self.digest = None,
        }
    }

    /// Takes the file as it is now as seen: the next poll reports only what changes
    /// after this call. Call it just before reading the file for a reload.
    pub fn mark_seen(&mut self) {
        let look = self.look();
        self.last = look.stamp;
        self.note(&look);
        self.settling = false;
    }

    /// What happened to the file since the last call (see the module documentation).
    pub fn poll(&mut self) -> Seen {
        let look = self.look();
        let now = look.stamp;
        let other_content = matches!((look.digest, self.digest), (Some(a), Some(b)) if a != b);
        self.note(&look);
        if now == self.last && !other_content {
            return if std::mem::take(&mut self.settling) {
                Seen::Changed
            } else {
                Seen::Same
            };
        }
        let was = std::mem::replace(&mut self.last, now);
        match (was, now) {
            (_, Some(_)) => {
                self.settling = true;
                Seen::Changing
            }
            (Some(_), None) => {
                self.settling = false;
                Seen::Gone
            }
            (None, None) => Seen::Same,
        }
    }
}

/// What [`FileWatch::poll`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    Same,
    /// The file changed since the last poll; wait for it to settle.
    Changing,
    /// The file changed, and has stayed the same since the last poll: load it.
    Changed,
    /// The file was there at the last poll and is missing or unreadable now.
    Gone,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdir::TestDir;

    /// Polls until the file has settled: what a change looks like.
    fn change(w: &mut FileWatch) -> [Seen; 3] {
        [w.poll(), w.poll(), w.poll()]
    }

    const SEEN_ONCE: [Seen; 3] = [Seen::Changing, Seen::Changed, Seen::Same];
    const NOTHING: [Seen; 3] = [Seen::Same; 3];

    #[test]
    fn modification_is_seen_once_it_settles() {
        let dir = TestDir::new("watch-modify");
        let path = dir.join("policies.json");
        std::fs::write(&path, "{\"policies\": []}").unwrap();
        let mut w = FileWatch::new(&path);
        assert_eq!(w.path(), path);
        assert_eq!(change(&mut w), NOTHING);

        // A change of length.
        std::fs::write(&path, "{\"policies\": [ ]}").unwrap();
        assert_eq!(change(&mut w), SEEN_ONCE);

        // Same length.
        std::fs::write(&path, "{\"policies\": [\t]}").unwrap();
        assert_eq!(change(&mut w), SEEN_ONCE);

        // Still being written at the next poll: not reported until it stops.
        std::fs::write(&path, "{\"poli").unwrap();
        assert_eq!(w.poll(), Seen::Changing);
        std::fs::write(&path, "{\"policies\": []}").unwrap();
        assert_eq!(change(&mut w), SEEN_ONCE);
    }

    /// Two writes of the same length whose times the file system could not tell apart:
    /// the content tells them apart while the times are recent.
    #[test]
    fn same_length_and_times_are_told_apart_by_content_while_recent() {
        let dir = TestDir::new("watch-racy");
        let path = dir.join("policies.json");
        std::fs::write(&path, "{\"dscp\": 26}").unwrap();
        let mut w = FileWatch::new(&path);
        assert!(w.digest.is_some(), "just written: racy");
        std::fs::write(&path, "{\"dscp\": 10}").unwrap();
        // As a coarse clock would have it: the same stamp as before.
        w.last = stamp(&path);
        assert_eq!(change(&mut w), SEEN_ONCE);
        assert_eq!(
            (w.last.unwrap().len, w.digest.is_some()),
            (12, true),
            "{w:?}"
        );

        // Times old enough (here a shorter RACY): after one more look, no content is read.
        w.racy = Duration::from_millis(30);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!([w.poll(), w.poll()], [Seen::Same; 2]);
        assert_eq!(w.digest, None, "{w:?}");
        let s = stamp(&path).unwrap();
        assert!(!s.is_racy(SystemTime::now(), Duration::ZERO));
        assert!(
            s.is_racy(SystemTime::now(), RACY),
            "recent by the real measure"
        );
    }

    /// A reload by another trigger takes the change: the watch does not load it again.
    #[test]
    fn a_change_marked_seen_is_not_reported() {
        let dir = TestDir::new("watch-marked");
        let path = dir.join("policies.json");
        std::fs::write(&path, "a").unwrap();
        let mut w = FileWatch::new(&path);
        std::fs::write(&path, "bb").unwrap();
        w.mark_seen();
        assert_eq!(change(&mut w), NOTHING);
        // Seen changing, then reloaded by a signal before it settled.
        std::fs::write(&path, "ccc").unwrap();
        assert_eq!(w.poll(), Seen::Changing);
        w.mark_seen();
        assert_eq!(change(&mut w), NOTHING);
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
        assert_eq!(change(&mut w), SEEN_ONCE);

        // A file missing at the start: its appearance is a change.
        let later = dir.join("later.json");
        let mut w = FileWatch::new(&later);
        assert_eq!(w.poll(), Seen::Same);
        std::fs::write(&later, "x").unwrap();
        assert_eq!(change(&mut w), SEEN_ONCE);
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
        assert_eq!(change(&mut w), SEEN_ONCE);
    }
}
