//! The disk tier of the prefix cache: whole blocks (64 tokens × every layer's latent rows)
//! kept as files, so a prefix survives a restart or an eviction from memory.
//!
//! One plain file per block, named by a key that hashes the model's fingerprint, the key of
//! the block before it and the block's tokens (SHA-256, stable across builds and processes):
//!
//! ```text
//! DIR/<32 hex digits>.blk = magic "DSKVBLK1" | fingerprint [16] | key [16] | parent [16]
//!                           | tokens: u32 count + count × u32 | payload: u64 bytes + bytes
//!                           | CRC-32 of everything before it
//! ```
//!
//! Why files and not an embedded database: blocks are large (MBs), written once and never
//! changed, and several server processes may share a folder; a file written to a temporary
//! name and renamed into place is all-or-nothing on POSIX file systems, needs no lock and no
//! recovery, and the file system is the index. A block is served only when its magic,
//! fingerprint, key, tokens, size and checksum all match; anything else is removed with one
//! line on stderr. Files are evicted least recently used (modification time, refreshed on
//! each hit) beyond the size limit.
//!
//! Writes run on a background thread behind a bounded queue: a full queue drops the block
//! (it is computed again if needed), so decoding never waits for the disk. A failed write
//! (disk full, read-only folder) turns the tier off with one warning; the server keeps
//! serving from memory.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

use crate::BLOCK_TOKENS;

const MAGIC: &[u8; 8] = b"DSKVBLK1";
/// Blocks waiting for the writer at most; more are dropped, never waited for.
const QUEUE: usize = 16;

/// A block's identity on disk: its tokens, everything before them, and the model.
pub type BlockKey = [u8; 16];

/// Counters for `/metrics`.
#[derive(Default, Debug)]
pub struct DiskStats {
    pub hit_blocks: AtomicU64,
    pub written_blocks: AtomicU64,
    /// Blocks not written because the queue was full or the tier is off.
    pub dropped_blocks: AtomicU64,
    /// Files skipped and removed as corrupt, cut off or foreign.
    pub bad_files: AtomicU64,
    /// Bytes of block files in the folder (as of the last scan or write).
    pub bytes: AtomicU64,
}

impl DiskStats {
    /// Prompt tokens served from disk: every block read joins a prompt's cached prefix.
    pub fn hit_tokens(&self) -> u64 {
        self.hit_blocks.load(Ordering::Relaxed) * BLOCK_TOKENS as u64
    }
}

struct Job {
    key: BlockKey,
    parent: BlockKey,
    tokens: Vec<u32>,
    payload: Vec<u8>,
}

/// The disk tier for one model and cache layout.
pub struct DiskTier {
    dir: PathBuf,
    fingerprint: [u8; 16],
    payload_bytes: usize,
    enabled: Arc<AtomicBool>,
    pub stats: Arc<DiskStats>,
    queue: Option<SyncSender<Job>>,
    writer: Option<std::thread::JoinHandle<()>>,
}

/// The key of the block holding `tokens` after the block keyed `parent` (zeros for the first).
pub fn block_key(fingerprint: &[u8; 16], parent: &BlockKey, tokens: &[u32]) -> BlockKey {
    let mut h = Sha256::new();
    h.update(fingerprint);
    h.update(parent);
    for t in tokens {
        h.update(t.to_le_bytes());
    }
    h.finalize()[..16].try_into().unwrap()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn warn(msg: &str) {
    eprintln!("warning: --cache-dir: {msg}");
}

impl DiskTier {
    /// Opens (creating) `dir` for blocks of `payload_bytes` under `fingerprint`, keeping at most
    /// `max_bytes` of block files. A folder that cannot be written gives a tier that is off,
    /// with one warning.
    pub fn open(dir: &Path, fingerprint: [u8; 16], payload_bytes: usize, max_bytes: u64) -> Self {
        let enabled = Arc::new(AtomicBool::new(true));
        let stats = Arc::new(DiskStats::default());
        let mut tier = DiskTier {
            dir: dir.to_path_buf(),
            fingerprint,
            payload_bytes,
            enabled: enabled.clone(),
            stats: stats.clone(),
            queue: None,
            writer: None,
        };
        if let Err(e) = fs::create_dir_all(dir).and_then(|_| probe_writable(dir)) {
            warn(&format!(
                "{} cannot be written ({e}); the disk tier is off",
                dir.display()
            ));
            enabled.store(false, Ordering::Relaxed);
            return tier;
        }
        remove_stale_temporaries(dir);
        stats
            .bytes
            .store(scan(dir).iter().map(|f| f.1).sum(), Ordering::Relaxed);
        let (tx, rx) = sync_channel(QUEUE);
        let w = Writer {
            dir: dir.to_path_buf(),
            fingerprint,
            max_bytes,
            enabled,
            stats,
        };
        tier.queue = Some(tx);
        tier.writer = Some(
            std::thread::Builder::new()
                .name("cache-dir writer".into())
                .spawn(move || w.run(rx))
                .expect("cannot start the cache-dir writer thread"),
        );
        tier
    }

    pub fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    pub fn fingerprint(&self) -> &[u8; 16] {
        &self.fingerprint
    }

    fn path(&self, key: &BlockKey) -> PathBuf {
        self.dir.join(format!("{}.blk", hex(key)))
    }

    /// Whether a file for `key` is there (not checked until read).
    pub fn contains(&self, key: &BlockKey) -> bool {
        self.is_enabled() && self.path(key).exists()
    }

    /// Queues a block for writing; never blocks. Returns false when it was dropped.
    pub fn store(&self, key: BlockKey, parent: BlockKey, tokens: &[u32], payload: &[u8]) -> bool {
        debug_assert_eq!(payload.len(), self.payload_bytes);
        let Some(q) = &self.queue else {
            self.stats.dropped_blocks.fetch_add(1, Ordering::Relaxed);
            return false;
        };
        if !self.is_enabled() {
            self.stats.dropped_blocks.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let job = Job {
            key,
            parent,
            tokens: tokens.to_vec(),
            payload: payload.to_vec(),
        };
        match q.try_send(job) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.stats.dropped_blocks.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// Reads block `key` into `out` if its file is there and whole, and holds exactly
    /// `tokens` after `parent` for this model. A file that is not (cut off, corrupt, another
    /// model's) is removed.
    pub fn load(&self, key: &BlockKey, parent: &BlockKey, tokens: &[u32], out: &mut [u8]) -> bool {
        if !self.is_enabled() {
            return false;
        }
        let path = self.path(key);
        let mut buf = Vec::with_capacity(self.file_len(tokens.len()));
        match File::open(&path).and_then(|mut f| f.read_to_end(&mut buf)) {
            Ok(_) => {}
            Err(_) => return false,
        }
        match self.check(&buf, key, parent, tokens) {
            Ok(payload) if payload.len() == out.len() => {
                out.copy_from_slice(payload);
                // Refreshes the least-recently-used order; other processes see it too.
                if let Ok(f) = File::options().append(true).open(&path) {
                    let _ = f.set_modified(SystemTime::now());
                }
                self.stats.hit_blocks.fetch_add(1, Ordering::Relaxed);
                true
            }
            Ok(_) => self.reject(&path, "payload size differs from this cache's blocks"),
            Err(why) => self.reject(&path, why),
        }
    }

    fn reject(&self, path: &Path, why: &str) -> bool {
        warn(&format!("{} skipped and removed: {why}", path.display()));
        let _ = fs::remove_file(path);
        self.stats.bad_files.fetch_add(1, Ordering::Relaxed);
        false
    }

    fn file_len(&self, n_tokens: usize) -> usize {
        8 + 16 * 3 + 4 + 4 * n_tokens + 8 + self.payload_bytes + 4
    }

    fn check<'a>(
        &self,
        buf: &'a [u8],
        key: &BlockKey,
        parent: &BlockKey,
        tokens: &[u32],
    ) -> Result<&'a [u8], &'static str> {
        if buf.len() < 8 + 48 + 4 + 4 || &buf[..8] != MAGIC {
            return Err("not a block file (or cut off at its start)");
        }
        let (body, crc) = buf.split_at(buf.len() - 4);
        if crc32fast::hash(body).to_le_bytes() != crc {
            return Err("checksum mismatch (a cut-off or corrupted write)");
        }
        if body[8..24] != self.fingerprint {
            return Err("written for another model or cache layout");
        }
        if &body[24..40] != key || &body[40..56] != parent {
            return Err("its header names another block");
        }
        let n = u32::from_le_bytes(body[56..60].try_into().unwrap()) as usize;
        let toks_end = 60 + 4 * n;
        if n != tokens.len() || body.len() < toks_end + 8 {
            return Err("holds another number of tokens");
        }
        let same = body[60..toks_end]
            .chunks_exact(4)
            .zip(tokens)
            .all(|(b, &t)| u32::from_le_bytes(b.try_into().unwrap()) == t);
        if !same {
            return Err("holds other tokens (a key collision)");
        }
        let len = u64::from_le_bytes(body[toks_end..toks_end + 8].try_into().unwrap()) as usize;
        let payload = &body[toks_end + 8..];
        if payload.len() != len {
            return Err("payload length differs from its header");
        }
        Ok(payload)
    }

    /// Waits for queued writes (tests, shutdown).
    pub fn flush(&mut self) {
        self.queue = None;
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

impl Drop for DiskTier {
    fn drop(&mut self) {
        self.flush();
    }
}

/// Writes queued blocks and keeps the folder under its size limit.
struct Writer {
    dir: PathBuf,
    fingerprint: [u8; 16],
    max_bytes: u64,
    enabled: Arc<AtomicBool>,
    stats: Arc<DiskStats>,
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl Writer {
    fn run(self, rx: Receiver<Job>) {
        let mut since_scan = u64::MAX / 2;
        for job in rx {
            if !self.enabled.load(Ordering::Relaxed) {
                self.stats.dropped_blocks.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let path = self.dir.join(format!("{}.blk", hex(&job.key)));
            if path.exists() {
                continue;
            }
            match self.write(&path, &job) {
                Ok(n) => {
                    self.stats.written_blocks.fetch_add(1, Ordering::Relaxed);
                    let total = self.stats.bytes.fetch_add(n, Ordering::Relaxed) + n;
                    since_scan += n;
                    // Other processes write here too: rescan before evicting, at most once
                    // per tenth of the limit written.
                    if total > self.max_bytes || since_scan > self.max_bytes / 10 {
                        self.evict();
                        since_scan = 0;
                    }
                }
                Err(e) => {
                    warn(&format!(
                        "writing to {} failed ({e}); the disk tier is off, the server goes on from memory",
                        self.dir.display()
                    ));
                    self.enabled.store(false, Ordering::Relaxed);
                }
            }
        }
    }

    fn write(&self, path: &Path, job: &Job) -> std::io::Result<u64> {
        let mut buf = Vec::with_capacity(job.payload.len() + 4 * job.tokens.len() + 96);
        buf.extend_from_slice(MAGIC);
        buf.extend_from_slice(&self.fingerprint);
        buf.extend_from_slice(&job.key);
        buf.extend_from_slice(&job.parent);
        buf.extend_from_slice(&(job.tokens.len() as u32).to_le_bytes());
        for t in &job.tokens {
            buf.extend_from_slice(&t.to_le_bytes());
        }
        buf.extend_from_slice(&(job.payload.len() as u64).to_le_bytes());
        buf.extend_from_slice(&job.payload);
        let crc = crc32fast::hash(&buf);
        buf.extend_from_slice(&crc.to_le_bytes());
        // A unique temporary name, renamed into place only when whole: a reader sees the
        // complete file or none, whatever kills this process meanwhile.
        let tmp = self.dir.join(format!(
            ".tmp-{}-{}",
            std::process::id(),
            TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let result = File::create(&tmp)
            .and_then(|mut f| f.write_all(&buf))
            .and_then(|_| fs::rename(&tmp, path));
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result.map(|_| buf.len() as u64)
    }

    /// Removes the least recently used block files until the folder is under its limit.
    fn evict(&self) {
        let mut files = scan(&self.dir);
        let mut total: u64 = files.iter().map(|f| f.1).sum();
        if total > self.max_bytes {
            files.sort_by_key(|f| f.2);
            for (path, len, _) in files {
                if total <= self.max_bytes {
                    break;
                }
                if fs::remove_file(&path).is_ok() {
                    total -= len;
                }
            }
        }
        self.stats.bytes.store(total, Ordering::Relaxed);
    }
}

/// Block files in `dir`: (path, bytes, last used).
fn scan(dir: &Path) -> Vec<(PathBuf, u64, SystemTime)> {
    let Ok(entries) = fs::read_dir(dir) else {
        return vec![];
    };
    entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".blk"))
        .filter_map(|e| {
            let m = e.metadata().ok()?;
            Some((
                e.path(),
                m.len(),
                m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            ))
        })
        .collect()
}

fn probe_writable(dir: &Path) -> std::io::Result<()> {
    let probe = dir.join(format!(".tmp-{}-probe", std::process::id()));
    File::create(&probe)?.write_all(b"probe")?;
    fs::remove_file(&probe)
}

/// Temporary files of writes that never finished: their process is gone (or, where that
/// cannot be told, they are over an hour old).
fn remove_stale_temporaries(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(".tmp-") else {
            continue;
        };
        let pid = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
        let gone = match pid {
            Some(p) if Path::new("/proc/self").exists() => {
                p != std::process::id() && !Path::new(&format!("/proc/{p}")).exists()
            }
            _ => e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > Duration::from_secs(3600)),
        };
        if gone {
            let _ = fs::remove_file(e.path());
        }
    }
}

/// Keys of the whole blocks of `tokens`, in order (a block's key covers all before it).
pub fn block_keys(fingerprint: &[u8; 16], tokens: &[u32]) -> Vec<BlockKey> {
    let mut parent = [0u8; 16];
    tokens
        .chunks_exact(BLOCK_TOKENS)
        .map(|t| {
            parent = block_key(fingerprint, &parent, t);
            parent
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("deepseek-disk-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    fn toks(seed: u32) -> Vec<u32> {
        (0..BLOCK_TOKENS as u32).map(|i| i * 7 + seed).collect()
    }

    #[test]
    fn blocks_round_trip_and_survive_a_new_tier() {
        let dir = tmpdir("roundtrip");
        let fp = [1u8; 16];
        let payload: Vec<u8> = (0..1000u32).map(|i| (i * 31 % 251) as u8).collect();
        let t = toks(3);
        let key = block_key(&fp, &[0; 16], &t);
        let mut tier = DiskTier::open(&dir, fp, payload.len(), 1 << 30);
        assert!(tier.store(key, [0; 16], &t, &payload));
        tier.flush();
        assert_eq!(tier.stats.written_blocks.load(Ordering::Relaxed), 1);
        // A new process's tier (a restart) finds it.
        let tier = DiskTier::open(&dir, fp, payload.len(), 1 << 30);
        let mut out = vec![0u8; payload.len()];
        assert!(tier.load(&key, &[0; 16], &t, &mut out));
        assert_eq!(out, payload);
        // Other tokens under the same key (a collision) are refused, and the file removed.
        assert!(!tier.load(&key, &[0; 16], &toks(4), &mut out));
        assert!(!tier.path(&key).exists());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn cut_off_corrupt_and_foreign_files_are_never_served() {
        let dir = tmpdir("faults");
        let fp = [2u8; 16];
        let payload = vec![7u8; 4096];
        let t = toks(1);
        let key = block_key(&fp, &[0; 16], &t);
        let mut tier = DiskTier::open(&dir, fp, payload.len(), 1 << 30);
        tier.store(key, [0; 16], &t, &payload);
        tier.flush();
        let path = tier.path(&key);
        let whole = fs::read(&path).unwrap();
        let tier = DiskTier::open(&dir, fp, payload.len(), 1 << 30);
        let mut out = vec![0u8; payload.len()];
        // Cut off anywhere: never served, removed.
        for cut in [0, 5, 60, whole.len() / 2, whole.len() - 1] {
            fs::write(&path, &whole[..cut]).unwrap();
            assert!(!tier.load(&key, &[0; 16], &t, &mut out), "cut at {cut}");
            assert!(!path.exists());
        }
        // One flipped bit in the payload.
        let mut bad = whole.clone();
        bad[whole.len() / 2] ^= 1;
        fs::write(&path, &bad).unwrap();
        assert!(!tier.load(&key, &[0; 16], &t, &mut out));
        // Another model's tier never reads this model's block, even under the same name.
        fs::write(&path, &whole).unwrap();
        let other = DiskTier::open(&dir, [9u8; 16], payload.len(), 1 << 30);
        assert!(!other.load(&key, &[0; 16], &t, &mut out));
        assert_eq!(other.stats.bad_files.load(Ordering::Relaxed), 1);
        // A temporary file of a writer that died is cleaned up at the next open.
        let stale = dir.join(".tmp-999999999-3");
        fs::write(&stale, b"half a block").unwrap();
        let _ = DiskTier::open(&dir, fp, payload.len(), 1 << 30);
        assert!(!stale.exists());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_folder_stays_under_its_limit_least_recently_used_first() {
        let dir = tmpdir("lru");
        let fp = [3u8; 16];
        let payload = vec![1u8; 10_000];
        let file = 10_000 + 8 + 48 + 4 + 4 * BLOCK_TOKENS as u64 + 8 + 4;
        let mut tier = DiskTier::open(&dir, fp, payload.len(), 3 * file + 10);
        let keys: Vec<_> = (0..5)
            .map(|i| (block_key(&fp, &[0; 16], &toks(i)), toks(i)))
            .collect();
        for (i, (k, t)) in keys.iter().enumerate() {
            tier.store(*k, [0; 16], t, &payload);
            tier.flush();
            tier = DiskTier::open(&dir, fp, payload.len(), 3 * file + 10);
            if i == 2 {
                // Block 0 used again: it outlives blocks 1 and 2.
                std::thread::sleep(Duration::from_millis(20));
                let mut out = vec![0u8; payload.len()];
                assert!(tier.load(&keys[0].0, &[0; 16], &keys[0].1, &mut out));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let left: Vec<bool> = keys.iter().map(|(k, _)| tier.path(k).exists()).collect();
        assert_eq!(left, [true, false, false, true, true]);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_folder_that_cannot_be_written_turns_the_tier_off() {
        // A path under a regular file can never be created, whoever runs the test.
        let file = tmpdir("not-a-dir");
        fs::write(&file, b"x").unwrap();
        let tier = DiskTier::open(&file.join("cache"), [4u8; 16], 100, 1 << 30);
        assert!(!tier.is_enabled());
        assert!(!tier.store([0; 16], [0; 16], &toks(0), &[0u8; 100]));
        let _ = fs::remove_file(&file);
    }
}
