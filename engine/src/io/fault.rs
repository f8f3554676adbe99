//! An in-memory file system that models what survives a power cut.
//!
//! Each file keeps two images: what a reader sees now (`data`) and what
//! the last successful fsync made durable (`synced`). Each directory keeps
//! two namespaces the same way: the names as they are, and the names as
//! of the last `sync_dir`. [`FaultFsControl::crash`] throws away everything
//! not durable: files go back to their synced image, names created, renamed
//! or removed since the last directory sync go back to how they were. That
//! is the strongest adversary a correct log must survive (a real disk may
//! keep more, never less), and SIGKILL cannot play it: the page cache
//! outlives the process.
//!
//! After a crash, every handle obtained before it fails with `EIO`, so the
//! threads of the dead log cannot scribble over the recovered state. New
//! handles come from [`FaultFsControl::fs`].
//!
//! [`FaultFsControl::fail_sync`] makes a chosen future fsync fail with
//! `EIO` without making anything durable, as a dying disk does.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use super::{FileSystem, LogFile};

#[derive(Debug, Default)]
struct MemFile {
    /// What readers see now.
    data: Vec<u8>,
    /// What the last successful sync made durable.
    synced: Vec<u8>,
    /// Bytes of `data` changed since the last sync, as a range; a sync
    /// copies only these (segments are 64 MiB, writes are small).
    dirty: Option<(usize, usize)>,
}

impl MemFile {
    fn touch(&mut self, start: usize, end: usize) {
        self.dirty = Some(match self.dirty {
            Some((lo, hi)) => (lo.min(start), hi.max(end)),
            None => (start, end),
        });
    }

    fn sync(&mut self) {
        // Regions that grew the file are marked dirty, so after this resize
        // every byte of `synced` is either copied below or unchanged.
        self.synced.truncate(self.data.len());
        self.synced.resize(self.data.len(), 0);
        if let Some((lo, hi)) = self.dirty.take() {
            let hi = hi.min(self.data.len());
            if lo < hi {
                self.synced[lo..hi].copy_from_slice(&self.data[lo..hi]);
            }
        }
    }
}

type FileRef = Arc<Mutex<MemFile>>;

#[derive(Debug, Default)]
struct State {
    /// Names as they are now.
    names: BTreeMap<PathBuf, FileRef>,
    /// Names as of the last `sync_dir` of their parent.
    durable_names: BTreeMap<PathBuf, FileRef>,
    dirs: BTreeSet<PathBuf>,
    locks: BTreeSet<PathBuf>,
    /// Bumped by every crash; handles of an older generation are dead.
    generation: u64,
    /// Syncs (file or directory) performed so far.
    syncs: u64,
    /// The sync number that will fail, if any.
    fail_sync_at: Option<u64>,
    /// The path of the file or directory whose sync last failed (`None`
    /// for a file no longer named, or before any failure).
    last_failed: Option<PathBuf>,
    /// How long each file sync takes (a real disk's flush latency).
    sync_delay: std::time::Duration,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panic while holding this lock leaves plain data behind: keep going.
    state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn lock_file(file: &Mutex<MemFile>) -> MutexGuard<'_, MemFile> {
    file.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn crashed() -> io::Error {
    io::Error::other("fault fs: this handle predates a simulated crash")
}

/// The test's handle on a fault-injecting file system: hands out views for
/// a log to use, crashes them, and arms fsync failures.
#[derive(Debug, Clone, Default)]
pub struct FaultFsControl {
    state: Arc<Mutex<State>>,
}

impl FaultFsControl {
    /// An empty file system.
    pub fn new() -> Self {
        Self::default()
    }

    /// A view of the file system as it is now, to open a log on. It dies at
    /// the next [`crash`](Self::crash).
    pub fn fs(&self) -> Arc<dyn FileSystem> {
        let generation = lock(&self.state).generation;
        Arc::new(FaultFs {
            state: Arc::clone(&self.state),
            generation,
        })
    }

    /// Simulates a power cut: every unsynced write and every directory change
    /// since the last directory sync is lost; all existing handles die; all
    /// locks are released.
    pub fn crash(&self) {
        let mut st = lock(&self.state);
        st.generation += 1;
        st.names = st.durable_names.clone();
        for file in st.names.values() {
            let mut f = lock_file(file);
            f.data = f.synced.clone();
            f.dirty = None;
        }
        st.locks.clear();
        st.fail_sync_at = None;
    }

    /// Makes the `n`th sync from now (1 = the next one) fail with `EIO`.
    pub fn fail_sync(&self, n: u64) {
        let mut st = lock(&self.state);
        st.fail_sync_at = Some(st.syncs + n.max(1));
    }

    /// Makes every file sync take `d` first, like a real disk's flush
    /// (the in-memory sync is otherwise instant, which hides a durability
    /// report made before the sync finished: nothing is ever unsynced for
    /// long). A crash during the wait fails that sync.
    pub fn set_sync_delay(&self, d: std::time::Duration) {
        lock(&self.state).sync_delay = d;
    }

    /// Where the armed failure landed: the path of the file or directory
    /// whose sync last failed, as named at that moment. A log syncs files
    /// that no acknowledged write depends on (a segment prepared ahead of
    /// the roll): a test tells those failures from the ones that must
    /// poison the log by this.
    pub fn last_failed_sync(&self) -> Option<PathBuf> {
        lock(&self.state).last_failed.clone()
    }

    /// How many syncs (file and directory) have run.
    pub fn syncs(&self) -> u64 {
        lock(&self.state).syncs
    }

    /// The current bytes of a file, for tests that corrupt or inspect one.
    pub fn read_file(&self, path: &Path) -> Option<Vec<u8>> {
        let st = lock(&self.state);
        st.names.get(path).map(|f| lock_file(f).data.clone())
    }

    /// Replaces a file's bytes, durable at once (a test corrupting a file).
    pub fn write_file(&self, path: &Path, bytes: &[u8]) {
        let mut st = lock(&self.state);
        let file = Arc::clone(
            st.names
                .entry(path.to_path_buf())
                .or_insert_with(|| Arc::new(Mutex::new(MemFile::default()))),
        );
        st.durable_names
            .insert(path.to_path_buf(), Arc::clone(&file));
        let mut f = lock_file(&file);
        f.data = bytes.to_vec();
        f.synced = bytes.to_vec();
        f.dirty = None;
    }
}

/// A view of a [`FaultFsControl`]'s file system, bound to one generation.
#[derive(Debug)]
pub struct FaultFs {
    state: Arc<Mutex<State>>,
    generation: u64,
}

impl FaultFs {
    /// Locks the state if this view is still alive.
    fn live(&self) -> io::Result<MutexGuard<'_, State>> {
        let st = lock(&self.state);
        if st.generation != self.generation {
            return Err(crashed());
        }
        Ok(st)
    }

    fn handle(&self, file: FileRef) -> Arc<dyn LogFile> {
        Arc::new(FaultFile {
            file,
            state: Arc::clone(&self.state),
            generation: self.generation,
        })
    }
}

/// What is being synced, to name it if its sync is the one that fails.
enum Target<'a> {
    Dir(&'a Path),
    File(&'a FileRef),
}

/// Counts a sync and decides whether it is the one armed to fail.
fn sync_permitted(st: &mut State, target: Target<'_>) -> io::Result<()> {
    st.syncs += 1;
    if st.fail_sync_at == Some(st.syncs) {
        st.fail_sync_at = None;
        st.last_failed = match target {
            Target::Dir(path) => Some(path.to_path_buf()),
            Target::File(file) => st
                .names
                .iter()
                .find(|(_, f)| Arc::ptr_eq(f, file))
                .map(|(p, _)| p.clone()),
        };
        return Err(io::Error::from_raw_os_error(libc::EIO));
    }
    Ok(())
}

impl FileSystem for FaultFs {
    fn name(&self) -> &'static str {
        "fault"
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        // Directories themselves are modelled as always durable.
        let mut st = self.live()?;
        for dir in path.ancestors() {
            st.dirs.insert(dir.to_path_buf());
        }
        Ok(())
    }

    fn create(&self, path: &Path) -> io::Result<Arc<dyn LogFile>> {
        let mut st = self.live()?;
        if !path.parent().is_some_and(|p| st.dirs.contains(p)) {
            return Err(io::Error::from(io::ErrorKind::NotFound));
        }
        let file: FileRef = match st.names.get(path) {
            Some(existing) => {
                let mut f = lock_file(existing);
                f.data.clear();
                f.dirty = None;
                drop(f);
                Arc::clone(existing)
            }
            None => {
                let f = FileRef::default();
                st.names.insert(path.to_path_buf(), Arc::clone(&f));
                f
            }
        };
        drop(st);
        Ok(self.handle(file))
    }

    fn open(&self, path: &Path) -> io::Result<Arc<dyn LogFile>> {
        let st = self.live()?;
        let file = st
            .names
            .get(path)
            .cloned()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        drop(st);
        Ok(self.handle(file))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut st = self.live()?;
        let file = st
            .names
            .remove(from)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        st.names.insert(to.to_path_buf(), file);
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut st = self.live()?;
        st.names
            .remove(path)
            .map(|_| ())
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let st = self.live()?;
        if !st.dirs.contains(path) {
            return Err(io::Error::from(io::ErrorKind::NotFound));
        }
        Ok(st
            .names
            .keys()
            .filter(|p| p.parent() == Some(path))
            .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
            .collect())
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        let mut st = self.live()?;
        sync_permitted(&mut st, Target::Dir(path))?;
        let st = &mut *st;
        st.durable_names.retain(|p, _| p.parent() != Some(path));
        for (p, f) in &st.names {
            if p.parent() == Some(path) {
                st.durable_names.insert(p.clone(), Arc::clone(f));
            }
        }
        Ok(())
    }

    fn lock(&self, path: &Path) -> io::Result<Box<dyn Send + Sync>> {
        let mut st = self.live()?;
        if !st.locks.insert(path.to_path_buf()) {
            return Err(io::Error::from(io::ErrorKind::WouldBlock));
        }
        Ok(Box::new(FaultLock {
            state: Arc::clone(&self.state),
            path: path.to_path_buf(),
            generation: self.generation,
        }))
    }
}

struct FaultLock {
    state: Arc<Mutex<State>>,
    path: PathBuf,
    generation: u64,
}

impl Drop for FaultLock {
    fn drop(&mut self) {
        let mut st = lock(&self.state);
        if st.generation == self.generation {
            st.locks.remove(&self.path);
        }
    }
}

#[derive(Debug)]
struct FaultFile {
    file: FileRef,
    state: Arc<Mutex<State>>,
    generation: u64,
}

impl FaultFile {
    fn live(&self) -> io::Result<MutexGuard<'_, State>> {
        let st = lock(&self.state);
        if st.generation != self.generation {
            return Err(crashed());
        }
        Ok(st)
    }
}

impl LogFile for FaultFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let _st = self.live()?;
        let f = lock_file(&self.file);
        let start = usize::try_from(offset).map_err(io::Error::other)?;
        let src = start
            .checked_add(buf.len())
            .and_then(|end| f.data.get(start..end))
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(src);
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let _st = self.live()?;
        let mut f = lock_file(&self.file);
        let start = usize::try_from(offset).map_err(io::Error::other)?;
        let end = start + buf.len();
        let old = f.data.len();
        if old < end {
            f.data.resize(end, 0);
            f.touch(old, end);
        }
        f.data[start..end].copy_from_slice(buf);
        f.touch(start, end);
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        let delay = self.live()?.sync_delay;
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        let mut st = self.live()?;
        sync_permitted(&mut st, Target::File(&self.file))?;
        lock_file(&self.file).sync();
        Ok(())
    }

    fn sync_all(&self) -> io::Result<()> {
        self.sync_data()
    }

    fn size(&self) -> io::Result<u64> {
        let _st = self.live()?;
        Ok(lock_file(&self.file).data.len() as u64)
    }

    fn allocate(&self, len: u64) -> io::Result<()> {
        let _st = self.live()?;
        let len = usize::try_from(len).map_err(io::Error::other)?;
        let mut f = lock_file(&self.file);
        let old = f.data.len();
        if old < len {
            f.data.resize(len, 0);
            f.touch(old, len);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_keeps_exactly_what_was_synced() {
        let ctl = FaultFsControl::new();
        let fs = ctl.fs();
        let dir = Path::new("/d");
        fs.create_dir_all(dir).unwrap();
        let f = fs.create(&dir.join("a")).unwrap();
        f.write_at(b"hello world", 0).unwrap();
        f.sync_data().unwrap();
        fs.sync_dir(dir).unwrap();
        // Shrink and regrow, sync: the middle must read as zeros.
        let f = fs.create(&dir.join("a")).unwrap();
        f.write_at(b"XY", 8).unwrap();
        f.sync_data().unwrap();
        f.write_at(b"lost", 0).unwrap();
        let g = fs.create(&dir.join("unsynced-name")).unwrap();
        g.sync_data().unwrap();
        ctl.crash();
        assert!(f.size().is_err(), "handles die with the crash");
        assert_eq!(
            ctl.read_file(&dir.join("a")).unwrap(),
            b"\0\0\0\0\0\0\0\0XY"
        );
        assert!(ctl.read_file(&dir.join("unsynced-name")).is_none());
    }

    #[test]
    fn armed_sync_fails_once() {
        let ctl = FaultFsControl::new();
        let fs = ctl.fs();
        fs.create_dir_all(Path::new("/d")).unwrap();
        let f = fs.create(Path::new("/d/a")).unwrap();
        ctl.fail_sync(2);
        f.sync_data().unwrap();
        assert_eq!(f.sync_data().unwrap_err().raw_os_error(), Some(libc::EIO));
        f.sync_data().unwrap();
    }
}
