//! The persistent object store: one file per object, an in-memory index over them, the
//! size limit and least-recently-used eviction.
//!
//! # On-disk format
//!
//! ```text
//! <store>/LOCK                      flock'd by the running cache: one process per store
//! <store>/tmp/<unique>.part         downloads in progress (deleted at startup)
//! <store>/objects/<hh>/<sha256(key) hex>   complete objects
//! ```
//!
//! An object file is `[body][metadata JSON][u32 LE length of the JSON]["VCCACHE1"]`. The
//! body comes first so a download in progress can be read by its waiters from offset 0;
//! the trailer is written when the body is complete. The metadata holds the key (the
//! canonical URL), the body's length and SHA-256, and the upstream's validators. A file
//! becomes an object only by `rename` from `tmp/` after the body's length (and, for
//! by-hash paths, its hash) checked out and the file was fsync'd, so a crash or `kill -9`
//! at any moment leaves either the old object, the new one, or none; never a torn one.
//!
//! # Verification
//!
//! At startup every object's trailer is read and its size checked against the file size
//! (cheap: one small read per object); anything that does not parse, is truncated or sits
//! under the wrong name is deleted. The full SHA-256 of an object is checked the first
//! time it is opened after startup (objects written by this process are trusted, as their
//! hash was computed while they were written); a mismatch deletes it and the request is
//! served as a miss. On every open the file size is checked again.
//!
//! # What it never does
//!
//! It never evicts an object that a client is reading (readers hold a lease) and never
//! sees a download in progress (those live in `tmp/` until committed). Its file names come
//! only from hashes, never from request text.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::policy::{self, Validity};
use super::stats::Stats;

const MAGIC: &[u8; 8] = b"VCCACHE1";
const TRAILER_FIXED: u64 = 12;

/// Everything known about a stored object besides its bytes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ObjectMeta {
    pub key: String,
    pub length: u64,
    /// Lowercase hex SHA-256 of the body.
    pub sha256: String,
    pub content_type: Option<String>,
    pub etag: Option<String>,
    pub last_modified: Option<String>,
    /// Seconds since the Unix epoch when it was stored.
    pub stored_at: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store {dir}: {op}: {source}")]
    Io {
        dir: PathBuf,
        op: String,
        source: io::Error,
    },
    #[error("store {0} is in use by another process (LOCK is held)")]
    Locked(PathBuf),
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn key_hash(key: &str) -> String {
    hex(&Sha256::digest(key.as_bytes()))
}

struct Entry {
    meta: Arc<ObjectMeta>,
    disk_size: u64,
    tick: u64,
    readers: u32,
    verified: bool,
    validity: Validity,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<String, Entry>,
    lru: BTreeMap<u64, String>,
    tick: u64,
    used: u64,
    /// Anchor group prefix -> generation (see `policy.rs`).
    groups: HashMap<String, u64>,
}

impl Inner {
    fn touch(&mut self, key: &str) {
        self.tick += 1;
        let t = self.tick;
        if let Some(e) = self.entries.get_mut(key) {
            self.lru.remove(&e.tick);
            e.tick = t;
            self.lru.insert(t, key.to_owned());
        }
    }

    fn forget(&mut self, key: &str) -> Option<Entry> {
        let e = self.entries.remove(key)?;
        self.lru.remove(&e.tick);
        self.used -= e.disk_size;
        Some(e)
    }

    fn group_gen(&self, key: &str) -> Option<u64> {
        policy::ancestor_dirs(key).find_map(|d| self.groups.get(d).copied())
    }
}

/// The store. Shared as `Arc<Store>`; all methods do blocking file I/O and belong in
/// `spawn_blocking` when called from async code.
pub struct Store {
    dir: PathBuf,
    max_bytes: u64,
    inner: Mutex<Inner>,
    stats: Arc<Stats>,
    temp_counter: AtomicU64,
    _lock: File,
}

/// A snapshot of a stored object's state, for the caller to decide hit or revalidate.
#[derive(Debug, Clone)]
pub struct Peek {
    pub meta: Arc<ObjectMeta>,
    pub validity: Validity,
    pub group_gen: Option<u64>,
}

/// An open stored object. While it lives, the object cannot be evicted.
pub struct StoredObject {
    pub meta: Arc<ObjectMeta>,
    pub file: Arc<File>,
    _lease: ReadLease,
}

struct ReadLease {
    store: Arc<Store>,
    key: String,
}

impl Drop for ReadLease {
    fn drop(&mut self) {
        let mut inner = self.store.lock();
        if let Some(e) = inner.entries.get_mut(&self.key) {
            e.readers = e.readers.saturating_sub(1);
        }
    }
}

/// What `commit` did with a finished download.
#[derive(Debug, PartialEq, Eq)]
pub enum Committed {
    Stored,
    /// Larger than the free space left after evicting everything evictable.
    TooLarge,
}

impl Store {
    /// Opens (creating if needed) a store directory, takes its lock, deletes leftover
    /// temporary files and indexes the objects, dropping broken ones.
    pub fn open(dir: &Path, max_bytes: u64, stats: Arc<Stats>) -> Result<Store, StoreError> {
        let io_err = |op: &str, source| StoreError::Io {
            dir: dir.to_owned(),
            op: op.to_owned(),
            source,
        };
        for sub in ["objects", "tmp"] {
            fs::create_dir_all(dir.join(sub)).map_err(|e| io_err(&format!("create {sub}/"), e))?;
        }
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("LOCK"))
            .map_err(|e| io_err("open LOCK", e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Err(StoreError::Locked(dir.to_owned())),
            Err(fs::TryLockError::Error(e)) => return Err(io_err("lock LOCK", e)),
        }
        for ent in fs::read_dir(dir.join("tmp")).map_err(|e| io_err("list tmp/", e))? {
            let ent = ent.map_err(|e| io_err("list tmp/", e))?;
            let _ = fs::remove_file(ent.path());
        }
        let store = Store {
            dir: dir.to_owned(),
            max_bytes,
            inner: Mutex::new(Inner::default()),
            stats,
            temp_counter: AtomicU64::new(0),
            _lock: lock,
        };
        store.scan().map_err(|e| io_err("scan objects/", e))?;
        Ok(store)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// (number of objects, bytes on disk)
    pub fn usage(&self) -> (u64, u64) {
        let inner = self.lock();
        (inner.entries.len() as u64, inner.used)
    }

    fn object_path(&self, key: &str) -> PathBuf {
        let h = key_hash(key);
        self.dir.join("objects").join(&h[..2]).join(h)
    }

    fn scan(&self) -> io::Result<()> {
        let mut found: Vec<(SystemTime, ObjectMeta, u64)> = Vec::new();
        for sub in fs::read_dir(self.dir.join("objects"))? {
            let sub = sub?;
            if !sub.file_type()?.is_dir() {
                let _ = fs::remove_file(sub.path());
                continue;
            }
            for ent in fs::read_dir(sub.path())? {
                let ent = ent?;
                let path = ent.path();
                match read_trailer(&path) {
                    Ok((meta, size, mtime)) if path == self.object_path(&meta.key) => {
                        found.push((mtime, meta, size))
                    }
                    other => {
                        tracing::warn!(path = %path.display(), reason = ?other.err(), "dropping broken object");
                        self.stats.corrupt_dropped.fetch_add(1, Ordering::Relaxed);
                        let _ = fs::remove_file(&path);
                    }
                }
            }
        }
        found.sort_by_key(|(t, _, _)| *t);
        let mut inner = self.lock();
        for (_, meta, size) in found {
            inner.tick += 1;
            let tick = inner.tick;
            inner.used += size;
            inner.lru.insert(tick, meta.key.clone());
            inner.entries.insert(
                meta.key.clone(),
                Entry {
                    meta: Arc::new(meta),
                    disk_size: size,
                    tick,
                    readers: 0,
                    verified: false,
                    validity: Validity {
                        validated_at: None,
                        role: role_of(""),
                        group_gen: None,
                    },
                },
            );
        }
        let keys: Vec<String> = inner.entries.keys().cloned().collect();
        for k in keys {
            let role = role_of(&k);
            if let Some(e) = inner.entries.get_mut(&k) {
                e.validity.role = role;
            }
        }
        self.evict_locked(&mut inner, 0, None);
        tracing::info!(objects = inner.entries.len(), bytes = inner.used, dir = %self.dir.display(), "store opened");
        Ok(())
    }

    /// The stored object's metadata and revalidation state, without opening it.
    pub fn peek(&self, key: &str) -> Option<Peek> {
        let inner = self.lock();
        let e = inner.entries.get(key)?;
        Some(Peek {
            meta: e.meta.clone(),
            validity: e.validity,
            group_gen: inner.group_gen(key),
        })
    }

    /// Opens a stored object for reading, verifying its hash if this process has not yet.
    /// `Ok(None)`: not stored, or found broken and dropped.
    pub fn open_object(self: &Arc<Self>, key: &str) -> Option<StoredObject> {
        let (meta, verified) = {
            let mut inner = self.lock();
            let e = inner.entries.get_mut(key)?;
            e.readers += 1;
            let r = (e.meta.clone(), e.verified);
            inner.touch(key);
            r
        };
        let lease = ReadLease {
            store: self.clone(),
            key: key.to_owned(),
        };
        let path = self.object_path(key);
        let check = File::open(&path).and_then(|f| {
            let len = f.metadata()?.len();
            if len < meta.length + TRAILER_FIXED {
                return Err(io::Error::other(format!(
                    "file is {len} bytes, body alone should be {}",
                    meta.length
                )));
            }
            if !verified {
                let got = hash_prefix(&f, meta.length)?;
                if got != meta.sha256 {
                    return Err(io::Error::other(format!(
                        "sha256 {got} does not match stored {}",
                        meta.sha256
                    )));
                }
            }
            Ok(f)
        });
        match check {
            Ok(file) => {
                if !verified && let Some(e) = self.lock().entries.get_mut(key) {
                    e.verified = true;
                }
                Some(StoredObject {
                    meta,
                    file: Arc::new(file),
                    _lease: lease,
                })
            }
            Err(err) => {
                tracing::warn!(key, path = %path.display(), %err, "dropping corrupt object");
                self.stats.corrupt_dropped.fetch_add(1, Ordering::Relaxed);
                drop(lease);
                self.remove(key);
                None
            }
        }
    }

    /// Deletes an object (if no one reads it, the file goes now; readers keep their fd).
    pub fn remove(&self, key: &str) {
        let mut inner = self.lock();
        if inner.forget(key).is_some() {
            let _ = fs::remove_file(self.object_path(key));
        }
    }

    /// A new temporary file for a download.
    pub fn temp_file(&self) -> io::Result<(PathBuf, File)> {
        let n = self.temp_counter.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let path = self
            .dir
            .join("tmp")
            .join(format!("{}-{n}-{nanos}.part", std::process::id()));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        Ok((path, file))
    }

    /// Turns a complete, checked temporary file into the stored object for `meta.key`:
    /// appends the trailer, fsyncs, makes room, renames. `validity` is its new state.
    pub fn commit(
        &self,
        temp: &Path,
        file: &File,
        meta: ObjectMeta,
        validity: Validity,
    ) -> io::Result<Committed> {
        let json = serde_json::to_vec(&meta).map_err(io::Error::other)?;
        let mut trailer = json;
        trailer.extend_from_slice(&(trailer.len() as u32).to_le_bytes());
        trailer.extend_from_slice(MAGIC);
        file.write_all_at(&trailer, meta.length)?;
        file.set_len(meta.length + trailer.len() as u64)?;
        file.sync_all()?;
        let disk_size = meta.length + trailer.len() as u64;
        let path = self.object_path(&meta.key);
        let key = meta.key.clone();
        let mut inner = self.lock();
        let old_size = inner.entries.get(&key).map(|e| e.disk_size).unwrap_or(0);
        if !self.evict_locked(&mut inner, disk_size.saturating_sub(old_size), Some(&key)) {
            self.stats.not_stored.fetch_add(1, Ordering::Relaxed);
            let _ = fs::remove_file(temp);
            return Ok(Committed::TooLarge);
        }
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::rename(temp, &path)?;
        if let Some(parent) = path.parent() {
            let _ = File::open(parent).and_then(|d| d.sync_all());
        }
        let readers = inner.forget(&key).map(|e| e.readers).unwrap_or(0);
        inner.tick += 1;
        let tick = inner.tick;
        inner.used += disk_size;
        inner.lru.insert(tick, key.clone());
        inner.entries.insert(
            key,
            Entry {
                meta: Arc::new(meta),
                disk_size,
                tick,
                readers,
                verified: true,
                validity,
            },
        );
        Ok(Committed::Stored)
    }

    /// Evicts least recently used, unread objects until `need` more bytes fit. `keep` is
    /// never evicted (it is being replaced). False if it cannot be made to fit.
    fn evict_locked(&self, inner: &mut Inner, need: u64, keep: Option<&str>) -> bool {
        if need > self.max_bytes {
            return false;
        }
        let mut victims = Vec::new();
        let mut freed = 0u64;
        for (_, key) in inner.lru.iter() {
            if inner.used - freed + need <= self.max_bytes {
                break;
            }
            if Some(key.as_str()) == keep {
                continue;
            }
            let e = &inner.entries[key];
            if e.readers > 0 {
                continue;
            }
            freed += e.disk_size;
            victims.push(key.clone());
        }
        if inner.used - freed + need > self.max_bytes {
            return false;
        }
        for key in victims {
            inner.forget(&key);
            let _ = fs::remove_file(self.object_path(&key));
            self.stats.evictions.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(key, "evicted");
        }
        true
    }

    /// Records a successful revalidation (304) of a stored object.
    pub fn mark_validated(&self, key: &str, validity: Validity) {
        let mut inner = self.lock();
        if let Some(e) = inner.entries.get_mut(key) {
            e.validity = validity;
        }
        inner.touch(key);
    }

    /// The current generation of the anchor group `key` belongs to, if any is known.
    pub fn group_gen(&self, key: &str) -> Option<u64> {
        self.lock().group_gen(key)
    }

    /// An anchor was validated: registers its group, and moves the generation on if the
    /// anchor's content changed. Returns the generation the anchor now belongs to.
    pub fn anchor_validated(&self, group: &str, changed: bool) -> u64 {
        let mut inner = self.lock();
        let gen_ = inner.groups.entry(group.to_owned()).or_insert(0);
        if changed || *gen_ == 0 {
            *gen_ += 1;
        }
        *gen_
    }
}

/// The role of an object in its anchor group, from its key.
pub fn role_of(key: &str) -> policy::Role {
    if policy::anchor_group(key).is_some() {
        policy::Role::Anchor
    } else {
        policy::Role::Dependent
    }
}

/// Fresh validity for an object validated at `now`.
pub fn validity_now(key: &str, group_gen: Option<u64>) -> Validity {
    Validity {
        validated_at: Some(Instant::now()),
        role: role_of(key),
        group_gen,
    }
}

fn read_trailer(path: &Path) -> io::Result<(ObjectMeta, u64, SystemTime)> {
    let f = File::open(path)?;
    let md = f.metadata()?;
    let len = md.len();
    if len < TRAILER_FIXED {
        return Err(io::Error::other("shorter than a trailer"));
    }
    let mut fixed = [0u8; TRAILER_FIXED as usize];
    f.read_exact_at(&mut fixed, len - TRAILER_FIXED)?;
    if &fixed[4..] != MAGIC {
        return Err(io::Error::other("no trailer magic"));
    }
    let jlen = u32::from_le_bytes(fixed[..4].try_into().expect("4 bytes")) as u64;
    if jlen + TRAILER_FIXED > len || jlen > 1 << 20 {
        return Err(io::Error::other("trailer length out of range"));
    }
    let mut json = vec![0u8; jlen as usize];
    f.read_exact_at(&mut json, len - TRAILER_FIXED - jlen)?;
    let meta: ObjectMeta = serde_json::from_slice(&json).map_err(io::Error::other)?;
    if meta.length != len - TRAILER_FIXED - jlen {
        return Err(io::Error::other(format!(
            "body is {} bytes, metadata says {}",
            len - TRAILER_FIXED - jlen,
            meta.length
        )));
    }
    Ok((meta, len, md.modified().unwrap_or(UNIX_EPOCH)))
}

fn hash_prefix(f: &File, len: u64) -> io::Result<String> {
    let mut h = Sha256::new();
    let mut r = io::BufReader::with_capacity(1 << 20, f.take(len));
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

/// Writes a whole buffer at an offset (used by the download writer).
pub fn write_at(file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
    file.write_all_at(buf, offset)
}

/// Appends to a file; used by tests that need to corrupt an object.
pub fn append(path: &Path, bytes: &[u8]) -> io::Result<()> {
    OpenOptions::new().append(true).open(path)?.write_all(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(key: &str, body: &[u8]) -> ObjectMeta {
        ObjectMeta {
            key: key.into(),
            length: body.len() as u64,
            sha256: hex(&Sha256::digest(body)),
            content_type: None,
            etag: Some("\"e\"".into()),
            last_modified: None,
            stored_at: 0,
        }
    }

    fn put(store: &Store, key: &str, body: &[u8]) -> Committed {
        let (tmp, f) = store.temp_file().unwrap();
        f.write_all_at(body, 0).unwrap();
        store
            .commit(&tmp, &f, meta(key, body), validity_now(key, None))
            .unwrap()
    }

    #[test]
    fn committed_object_survives_reopen_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let stats = Arc::new(Stats::default());
        {
            let s = Arc::new(Store::open(dir.path(), 1 << 20, stats.clone()).unwrap());
            assert_eq!(put(&s, "http://h/a.deb", b"hello"), Committed::Stored);
            let o = s.open_object("http://h/a.deb").unwrap();
            let mut buf = [0u8; 5];
            o.file.read_exact_at(&mut buf, 0).unwrap();
            assert_eq!(&buf, b"hello");
        }
        let s = Arc::new(Store::open(dir.path(), 1 << 20, stats).unwrap());
        assert_eq!(s.usage().0, 1);
        assert_eq!(s.open_object("http://h/a.deb").unwrap().meta.length, 5);
    }

    #[test]
    fn second_process_on_one_store_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let stats = Arc::new(Stats::default());
        let _a = Store::open(dir.path(), 1 << 20, stats.clone()).unwrap();
        assert!(matches!(
            Store::open(dir.path(), 1 << 20, stats),
            Err(StoreError::Locked(_))
        ));
    }

    #[test]
    fn flipped_byte_is_detected_on_first_open_after_restart() {
        let dir = tempfile::tempdir().unwrap();
        let stats = Arc::new(Stats::default());
        let path = {
            let s = Store::open(dir.path(), 1 << 20, stats.clone()).unwrap();
            put(&s, "http://h/b.deb", b"0123456789");
            s.object_path("http://h/b.deb")
        };
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(b"X", 3).unwrap();
        let s = Arc::new(Store::open(dir.path(), 1 << 20, stats.clone()).unwrap());
        assert!(s.open_object("http://h/b.deb").is_none());
        assert!(!path.exists());
        assert_eq!(stats.corrupt_dropped.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn truncated_and_stray_files_are_dropped_at_startup() {
        let dir = tempfile::tempdir().unwrap();
        let stats = Arc::new(Stats::default());
        let path = {
            let s = Store::open(dir.path(), 1 << 20, stats.clone()).unwrap();
            put(&s, "http://h/c.deb", b"0123456789");
            s.object_path("http://h/c.deb")
        };
        let len = fs::metadata(&path).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len - 3)
            .unwrap();
        fs::write(dir.path().join("objects/zz-stray"), b"x").unwrap();
        fs::write(dir.path().join("tmp/half.part"), b"x").unwrap();
        let s = Store::open(dir.path(), 1 << 20, stats).unwrap();
        assert_eq!(s.usage(), (0, 0));
        assert!(!path.exists());
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn eviction_is_lru_and_skips_objects_being_read() {
        let dir = tempfile::tempdir().unwrap();
        let stats = Arc::new(Stats::default());
        let s = Arc::new(Store::open(dir.path(), 1000, stats).unwrap());
        let body = [7u8; 200];
        put(&s, "http://h/1", &body);
        put(&s, "http://h/2", &body);
        let reading = s.open_object("http://h/1").unwrap(); // 1 is now most recent and pinned
        put(&s, "http://h/3", &body);
        // Over the limit: 2 is the least recently used unpinned one.
        assert!(s.peek("http://h/2").is_none());
        assert!(s.peek("http://h/1").is_some());
        assert!(s.usage().1 <= 1000);
        drop(reading);
        assert_eq!(put(&s, "http://h/big", &[0u8; 1500]), Committed::TooLarge);
    }
}
