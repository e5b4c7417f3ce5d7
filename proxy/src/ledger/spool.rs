//! The ledger's durable local spool: settled usage records are appended here (and fsync'd)
//! before they are written to the shared database, so none is lost when the process is killed or
//! the database is down. On start, and whenever the database is back, the spool is replayed (the
//! database deduplicates by request id, so replaying a record twice is harmless), then cleared.
//!
//! The spool is generic over its record type (`T: Serialize + DeserializeOwned`); it knows
//! nothing of the ledger's events.
//!
//! # File format
//!
//! The file is a plain sequence of records, no file header. Each record is
//!
//! ```text
//! +----------------------+-----------------------------+------------------------------+
//! | len: u32 little-end. | crc: u32 little-endian      | payload: `len` bytes         |
//! | bytes in the payload | CRC-32 (IEEE, `crc32fast`)  | the record as serde_json     |
//! |                      | of the payload              |                              |
//! +----------------------+-----------------------------+------------------------------+
//! ```
//!
//! `len` is at least 1 and at most [`MAX_RECORD`] (1 MiB): a record larger than that is refused
//! when appended, and a length outside that range found when reading is damage, never an
//! allocation.
//!
//! # Recovery ([`Spool::open`])
//!
//! - A *torn tail* (the process or the machine died in the middle of an append: a partial
//!   header, a payload running past the end of the file, a last record whose checksum does not
//!   match, or a tail of zero bytes) was never acknowledged to the caller: it is dropped with a
//!   warning and truncated away.
//! - *Corruption* (a bad length or a checksum mismatch with more data after it, or a record whose
//!   checksum is right but which does not decode as `T`, e.g. after a change of the record's
//!   shape) is not silently deleted: the records before it are kept, an error is logged with the
//!   byte offset, the damaged file is kept as `<path>.corrupt-<unix seconds>` (a hard link, or a
//!   copy where links are unsupported), and the spool continues in a fresh file holding the
//!   intact records.
//!
//! # Ownership and blocking
//!
//! One writer: the spool is owned by the ledger's flusher (methods take `&mut self`; there is no
//! internal locking). Across processes the file is held with an exclusive advisory lock
//! (`flock`), so two processes never share one spool; the second's [`Spool::open`] fails with
//! [`SpoolError::Locked`].
//!
//! Every method does blocking `std::fs` I/O, and [`Spool::append`] and [`Spool::clear`] wait for
//! an fsync (milliseconds, more on a busy or network disk). Call them from a blocking context:
//! from async code, move the spool into `tokio::task::spawn_blocking` (it is `Send` and `Sync`
//! whatever `T` is: it holds no `T`) and take it back from the join handle, or keep
//! it in an `Arc<std::sync::Mutex<_>>` used only inside `spawn_blocking`.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::marker::PhantomData;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The largest payload a record may have (bytes).
pub const MAX_RECORD: usize = 1 << 20;

/// Bytes before each payload: its length and its checksum.
const HEADER: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// A file operation failed; `op` says which (e.g. "fsync after append").
    #[error("spool {}: {op}: {source}", path.display())]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    /// A record could not be serialized. Nothing of the batch was written; retrying the same
    /// record fails the same way.
    #[error("spool: cannot encode record: {0}")]
    Encode(String),
    /// A record serializes to more than [`MAX_RECORD`] bytes. Nothing of the batch was written;
    /// retrying the same record fails the same way.
    #[error("spool: record {index} of the batch is {len} bytes, more than the {max} allowed")]
    TooLarge {
        index: usize,
        len: usize,
        max: usize,
    },
    /// The spool's file changed under it since it was opened (only [`Spool::read_all`]: opening
    /// recovers from damage instead).
    #[error("spool {}: damaged at byte {offset}: {reason}", path.display())]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    /// Another process holds the spool.
    #[error("spool {} is in use by another process", path.display())]
    Locked { path: PathBuf },
}

/// An append-only file of records, fsync'd per [`append`](Spool::append). See the module docs.
pub struct Spool<T> {
    path: PathBuf,
    file: File,
    /// Bytes of intact, acknowledged records: where the next append goes.
    len: u64,
    depth: usize,
    /// An append failed and the bytes it may have left past `len` could not be cut off yet.
    dirty_tail: bool,
    _records: PhantomData<fn() -> T>,
}

impl<T> std::fmt::Debug for Spool<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool")
            .field("path", &self.path)
            .field("len", &self.len)
            .field("depth", &self.depth)
            .finish_non_exhaustive()
    }
}

impl<T: Serialize + DeserializeOwned> Spool<T> {
    /// Opens the spool file at `path`, creating it (mode 0600; a missing parent directory is
    /// created with mode 0700) if need be, and returns it with every intact record a previous
    /// run left in it, to replay. A torn tail is dropped and truncated away; corruption keeps the
    /// records before it and moves the damaged file aside (see the module docs).
    pub fn open(path: &Path) -> Result<(Spool<T>, Vec<T>), SpoolError> {
        let io_err = |op: &'static str| {
            let path = path.to_path_buf();
            move |source| SpoolError::Io { path, op, source }
        };
        let dir = parent_dir(path);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_err("create parent directory"))?;

        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(io_err("open"))?;
        lock(&file, path)?;
        let meta = file.metadata().map_err(io_err("stat"))?;
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                mode = format_args!("{:o}", meta.permissions().mode() & 0o7777),
                "ledger spool was readable by others; setting its mode to 0600"
            );
            file.set_permissions(std::fs::Permissions::from_mode(0o600))
                .map_err(io_err("set mode 0600"))?;
        }
        // The file (if just created) must survive a crash too.
        sync_dir(dir).map_err(io_err("fsync parent directory"))?;

        let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
        file.read_to_end(&mut bytes).map_err(io_err("read"))?;
        let scan = scan::<T>(&bytes);
        let depth = scan.records.len();
        let len = scan.end as u64;
        match scan.damage {
            None => {}
            Some(Damage::Torn { reason }) => {
                tracing::warn!(
                    path = %path.display(),
                    offset = len,
                    dropped_bytes = bytes.len() - scan.end,
                    reason,
                    "ledger spool ends in a torn record (a crash mid-append); dropping it"
                );
                file.set_len(len).map_err(io_err("truncate torn tail"))?;
                file.sync_all()
                    .map_err(io_err("fsync after truncating torn tail"))?;
            }
            Some(Damage::Corrupt { reason }) => {
                let aside = keep_aside(path).map_err(io_err("keep corrupt spool aside"))?;
                tracing::error!(
                    path = %path.display(),
                    offset = len,
                    records_kept = depth,
                    damaged_bytes = bytes.len() - scan.end,
                    kept_as = %aside.display(),
                    reason = %reason,
                    "LEDGER SPOOL IS CORRUPT: records from this byte offset on cannot be read and \
                     are NOT replayed; the damaged file is kept for inspection"
                );
                file = replace_with(path, dir, &bytes[..scan.end])?;
            }
        }
        let spool = Spool {
            path: path.to_path_buf(),
            file,
            len,
            depth,
            dirty_tail: false,
            _records: PhantomData,
        };
        Ok((spool, scan.records))
    }

    /// Appends `records` and fsyncs once for all of them (group commit). After `Ok` they survive
    /// a crash; after `Err` none of them is in the spool (any bytes already written are cut off
    /// again), so the caller retries the whole batch.
    pub fn append(&mut self, records: &[T]) -> Result<(), SpoolError> {
        if records.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::new();
        for (index, record) in records.iter().enumerate() {
            encode_into(&mut buf, index, record)?;
        }
        if self.dirty_tail {
            self.file
                .set_len(self.len)
                .map_err(self.io_err("cut off a failed append"))?;
            self.dirty_tail = false;
        }
        let written = self
            .file
            .write_all_at(&buf, self.len)
            .map_err(self.io_err("append"))
            .and_then(|()| {
                self.file
                    .sync_data()
                    .map_err(self.io_err("fsync after append"))
            });
        if let Err(e) = written {
            // Whatever reached the file is not acknowledged: cut it off so a later append does
            // not land behind a partial record (which would read as corruption).
            if self.file.set_len(self.len).is_err() {
                self.dirty_tail = true;
            }
            return Err(e);
        }
        self.len += buf.len() as u64;
        self.depth += records.len();
        Ok(())
    }

    /// Every record in the spool now (to replay after an outage).
    pub fn read_all(&self) -> Result<Vec<T>, SpoolError> {
        let len = usize::try_from(self.len).map_err(|_| SpoolError::Corrupt {
            path: self.path.clone(),
            offset: 0,
            reason: "spool larger than memory can address".into(),
        })?;
        let mut bytes = vec![0; len];
        self.file
            .read_exact_at(&mut bytes, 0)
            .map_err(self.io_err("read"))?;
        let scan = scan::<T>(&bytes);
        match scan.damage {
            None => Ok(scan.records),
            Some(Damage::Torn { reason } | Damage::Corrupt { reason }) => {
                Err(SpoolError::Corrupt {
                    path: self.path.clone(),
                    offset: scan.end as u64,
                    reason,
                })
            }
        }
    }

    /// Empties the spool (truncate + fsync), once everything in it is recorded elsewhere.
    pub fn clear(&mut self) -> Result<(), SpoolError> {
        self.file.set_len(0).map_err(self.io_err("truncate"))?;
        self.len = 0;
        self.depth = 0;
        self.dirty_tail = false;
        self.file
            .sync_all()
            .map_err(self.io_err("fsync after truncate"))
    }

    /// Records in the spool (for the spool-depth metric).
    pub fn depth(&self) -> usize {
        self.depth
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io_err(&self, op: &'static str) -> impl FnOnce(io::Error) -> SpoolError + use<T> {
        let path = self.path.clone();
        move |source| SpoolError::Io { path, op, source }
    }
}

fn encode_into<T: Serialize>(
    buf: &mut Vec<u8>,
    index: usize,
    record: &T,
) -> Result<(), SpoolError> {
    let start = buf.len();
    buf.extend_from_slice(&[0; HEADER]);
    serde_json::to_writer(&mut *buf, record)
        .map_err(|e| SpoolError::Encode(format!("record {index} of the batch: {e}")))?;
    let payload = &buf[start + HEADER..];
    if payload.len() > MAX_RECORD {
        return Err(SpoolError::TooLarge {
            index,
            len: payload.len(),
            max: MAX_RECORD,
        });
    }
    // Fits: MAX_RECORD < u32::MAX.
    let len = payload.len() as u32;
    let crc = crc32fast::hash(payload);
    buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
    buf[start + 4..start + HEADER].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

enum Damage {
    /// The end of the file is an unfinished append.
    Torn { reason: String },
    /// Unreadable data with more after it, or a record that does not decode.
    Corrupt { reason: String },
}

struct Scan<T> {
    records: Vec<T>,
    /// Where the intact records end.
    end: usize,
    damage: Option<Damage>,
}

/// Reads records from the start of `bytes` until the end or the first damage.
fn scan<T: DeserializeOwned>(bytes: &[u8]) -> Scan<T> {
    let mut records = Vec::new();
    let mut pos = 0;
    let damage = loop {
        let rest = &bytes[pos..];
        if rest.is_empty() {
            break None;
        }
        // Some filesystems leave a crash's unwritten extension of the file as zeros.
        if rest.iter().all(|&b| b == 0) {
            break Some(Damage::Torn {
                reason: format!("{} zero bytes at the end", rest.len()),
            });
        }
        if rest.len() < HEADER {
            break Some(Damage::Torn {
                reason: format!("a {}-byte partial header", rest.len()),
            });
        }
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
        if len == 0 || len > MAX_RECORD {
            break Some(Damage::Corrupt {
                reason: format!("record length {len} is outside 1..={MAX_RECORD}"),
            });
        }
        if rest.len() - HEADER < len {
            break Some(Damage::Torn {
                reason: format!(
                    "the record's {len}-byte payload has only {} bytes",
                    rest.len() - HEADER
                ),
            });
        }
        let payload = &rest[HEADER..HEADER + len];
        let actual = crc32fast::hash(payload);
        if actual != crc {
            let reason = format!("checksum {actual:08x} does not match the recorded {crc:08x}");
            break Some(if rest.len() == HEADER + len {
                // The last record: its bytes had not all reached the disk.
                Damage::Torn { reason }
            } else {
                Damage::Corrupt { reason }
            });
        }
        match serde_json::from_slice(payload) {
            Ok(record) => records.push(record),
            Err(e) => {
                break Some(Damage::Corrupt {
                    reason: format!("intact record does not decode: {e}"),
                });
            }
        }
        pos += HEADER + len;
    };
    Scan {
        records,
        end: pos,
        damage,
    }
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

fn lock(file: &File, path: &Path) -> Result<(), SpoolError> {
    file.try_lock().map_err(|e| match e {
        std::fs::TryLockError::WouldBlock => SpoolError::Locked {
            path: path.to_path_buf(),
        },
        std::fs::TryLockError::Error(source) => SpoolError::Io {
            path: path.to_path_buf(),
            op: "lock",
            source,
        },
    })
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Keeps the file at `path` as `<path>.corrupt-<unix seconds>` (`-<n>` added if taken), leaving
/// `path` itself in place; returns the new name.
fn keep_aside(path: &Path) -> io::Result<PathBuf> {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let base = format!("{}.corrupt-{secs}", path.as_os_str().to_string_lossy());
    for n in 0..1000 {
        let aside = PathBuf::from(if n == 0 {
            base.clone()
        } else {
            format!("{base}-{n}")
        });
        match std::fs::hard_link(path, &aside) {
            Ok(()) => {
                sync_dir(parent_dir(path))?;
                return Ok(aside);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(_) => {}
        }
        // No hard links here: copy instead (never over an existing file).
        let mut to = match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&aside)
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        };
        io::copy(&mut File::open(path)?, &mut to)?;
        to.sync_all()?;
        sync_dir(parent_dir(path))?;
        return Ok(aside);
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        format!("{base}: too many corrupt spools kept this second"),
    ))
}

/// Atomically replaces the file at `path` with one holding `contents`, locked and open for the
/// spool.
fn replace_with(path: &Path, dir: &Path, contents: &[u8]) -> Result<File, SpoolError> {
    let tmp = PathBuf::from(format!("{}.tmp", path.as_os_str().to_string_lossy()));
    let io_err = |op: &'static str| {
        let tmp = tmp.clone();
        move |source| SpoolError::Io {
            path: tmp,
            op,
            source,
        }
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_err("create replacement"))?;
    // Locked before it takes the spool's name, so no other process can take it in between.
    lock(&file, &tmp)?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(io_err("set mode 0600"))?;
    file.write_all_at(contents, 0)
        .map_err(io_err("write replacement"))?;
    file.sync_all().map_err(io_err("fsync replacement"))?;
    std::fs::rename(&tmp, path).map_err(io_err("rename replacement over the spool"))?;
    sync_dir(dir).map_err(|source| SpoolError::Io {
        path: path.to_path_buf(),
        op: "fsync parent directory",
        source,
    })?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::io::Write;

    use serde::Deserialize;

    use super::*;

    #[derive(Serialize, Deserialize, PartialEq, Debug, Clone)]
    struct Rec {
        id: String,
        cost: u64,
    }

    fn rec(i: u64) -> Rec {
        Rec {
            id: format!("req-{i}"),
            cost: i * 7,
        }
    }

    fn recs(range: std::ops::Range<u64>) -> Vec<Rec> {
        range.map(rec).collect()
    }

    /// Byte offsets where each record of a file starts, and the file's end.
    fn offsets(path: &Path) -> Vec<usize> {
        let bytes = std::fs::read(path).unwrap();
        let mut out = vec![0];
        let mut pos = 0;
        while pos < bytes.len() {
            let len = u32::from_le_bytes(bytes[pos..pos + 4].try_into().unwrap()) as usize;
            pos += HEADER + len;
            out.push(pos);
        }
        out
    }

    fn corrupt_files(dir: &Path) -> Vec<PathBuf> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().contains(".corrupt-"))
            .collect()
    }

    #[test]
    fn append_reopen_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.spool");
        let (mut spool, found) = Spool::<Rec>::open(&path).unwrap();
        assert!(found.is_empty());
        spool.append(&recs(0..3)).unwrap();
        spool.append(&[]).unwrap();
        spool.append(&recs(3..5)).unwrap();
        assert_eq!(spool.read_all().unwrap(), recs(0..5));
        assert_eq!(spool.path(), path);
        drop(spool);

        let (mut spool, found) = Spool::<Rec>::open(&path).unwrap();
        assert_eq!(found, recs(0..5));
        assert_eq!(spool.depth(), 5);
        spool.append(&recs(5..6)).unwrap();
        drop(spool);
        let (_, found) = Spool::<Rec>::open(&path).unwrap();
        assert_eq!(found, recs(0..6));
    }

    #[test]
    fn clear_then_reopen_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.spool");
        let (mut spool, _) = Spool::<Rec>::open(&path).unwrap();
        spool.append(&recs(0..4)).unwrap();
        spool.clear().unwrap();
        assert_eq!(spool.depth(), 0);
        assert!(spool.read_all().unwrap().is_empty());
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
        drop(spool);
        let (mut spool, found) = Spool::<Rec>::open(&path).unwrap();
        assert!(found.is_empty());
        // Usable after a clear.
        spool.append(&recs(10..12)).unwrap();
        drop(spool);
        let (_, found) = Spool::<Rec>::open(&path).unwrap();
        assert_eq!(found, recs(10..12));
    }

    #[test]
    fn torn_tail_loses_only_that_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.spool");
        let (mut spool, _) = Spool::<Rec>::open(&path).unwrap();
        spool.append(&recs(0..3)).unwrap();
        drop(spool);
        let ends = offsets(&path);
        let (start, end) = (ends[2], ends[3]);
        // Every cut inside the last record: in the header and in the payload.
        for cut in start + 1..end {
            std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .unwrap()
                .set_len(cut as u64)
                .unwrap();
            let (mut spool, found) = Spool::<Rec>::open(&path).unwrap();
            assert_eq!(found, recs(0..2), "cut at {cut}");
            assert_eq!(std::fs::metadata(&path).unwrap().len(), start as u64);
            spool.append(&recs(2..3)).unwrap();
            drop(spool);
        }
        assert!(corrupt_files(dir.path()).is_empty());
        let (_, found) = Spool::<Rec>::open(&path).unwrap();
        assert_eq!(found, recs(0..3));
    }

    #[test]
    fn torn_tail_of_zeros_or_bad_last_checksum_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.spool");
        let (mut spool, _) = Spool::<Rec>::open(&path).unwrap();
        spool.append(&recs(0..2)).unwrap();
        drop(spool);
        let clean_len = std::fs::metadata(&path).unwrap().len();
        // A crash's zero-filled extension.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(&[0; 100]).unwrap();
        drop(f);
        let (spool, found) = Spool::<Rec>::open(&path).unwrap();
        assert_eq!(found, recs(0..2));
        assert_eq!(std::fs::metadata(&path).unwrap().len(), clean_len);
        drop(spool);
        // The last record's payload garbled (all its length present).
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 2;
        bytes[last] ^= 0x55;
        std::fs::write(&path, &bytes).unwrap();
        let (_, found) = Spool::<Rec>::open(&path).unwrap();
        assert_eq!(found, recs(0..1));
        assert!(corrupt_files(dir.path()).is_empty());
    }

    #[test]
    fn flipped_byte_in_the_middle_keeps_earlier_records_and_moves_the_file_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.spool");
        let (mut spool, _) = Spool::<Rec>::open(&path).unwrap();
        spool.append(&recs(0..5)).unwrap();
        drop(spool);
        let ends = offsets(&path);
        let original = std::fs::read(&path).unwrap();
        let mut bytes = original.clone();
        // A payload byte of the third record.
        bytes[ends[2] + HEADER + 3] ^= 0x01;
        std::fs::write(&path, &bytes).unwrap();

        let (mut spool, found) = Spool::<Rec>::open(&path).unwrap();
        assert_eq!(found, recs(0..2));
        assert_eq!(spool.depth(), 2);
        let aside = corrupt_files(dir.path());
        assert_eq!(aside.len(), 1);
        assert_eq!(std::fs::read(&aside[0]).unwrap(), bytes);
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(!dir.path().join("ledger.spool.tmp").exists());

        spool.append(&recs(5..7)).unwrap();
        assert_eq!(spool.read_all().unwrap(), [recs(0..2), recs(5..7)].concat());
        drop(spool);
        let (_, found) = Spool::<Rec>::open(&path).unwrap();
        assert_eq!(found, [recs(0..2), recs(5..7)].concat());
        assert_eq!(corrupt_files(dir.path()).len(), 1);
    }

    #[test]
    fn second_corruption_in_the_same_second_gets_its_own_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.spool");
        for _ in 0..2 {
            let (mut spool, _) = Spool::<Rec>::open(&path).unwrap();
            spool.clear().unwrap();
            spool.append(&recs(0..3)).unwrap();
            drop(spool);
            let ends = offsets(&path);
            let mut bytes = std::fs::read(&path).unwrap();
            bytes[ends[1] + 5] ^= 0xff; // the second record's checksum
            std::fs::write(&path, &bytes).unwrap();
            let (_, found) = Spool::<Rec>::open(&path).unwrap();
            assert_eq!(found, recs(0..1));
        }
        assert_eq!(corrupt_files(dir.path()).len(), 2);
    }

    #[test]
    fn garbage_huge_length_is_handled() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.spool");
        let (mut spool, _) = Spool::<Rec>::open(&path).unwrap();
        spool.append(&recs(0..2)).unwrap();
        drop(spool);
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(&u32::MAX.to_le_bytes()).unwrap();
        f.write_all(&[0xab; 4]).unwrap();
        f.write_all(b"not a record at all").unwrap();
        drop(f);

        let (mut spool, found) = Spool::<Rec>::open(&path).unwrap();
        assert_eq!(found, recs(0..2));
        assert_eq!(corrupt_files(dir.path()).len(), 1);
        spool.append(&recs(2..3)).unwrap();
        drop(spool);
        let (_, found) = Spool::<Rec>::open(&path).unwrap();
        assert_eq!(found, recs(0..3));
    }

    #[test]
    fn record_that_does_not_decode_is_kept_aside() {
        #[derive(Serialize, Deserialize)]
        struct Other {
            something: bool,
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.spool");
        let (mut other, _) = Spool::<Other>::open(&path).unwrap();
        other.append(&[Other { something: true }]).unwrap();
        drop(other);
        let (_, found) = Spool::<Rec>::open(&path).unwrap();
        assert!(found.is_empty());
        assert_eq!(corrupt_files(dir.path()).len(), 1);
    }

    #[test]
    fn too_large_record_is_refused_and_nothing_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.spool");
        let (mut spool, _) = Spool::<Rec>::open(&path).unwrap();
        let big = Rec {
            id: "x".repeat(MAX_RECORD),
            cost: 1,
        };
        let err = spool.append(&[rec(0), big]).unwrap_err();
        assert!(
            matches!(err, SpoolError::TooLarge { index: 1, .. }),
            "{err}"
        );
        assert_eq!(spool.depth(), 0);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
    }

    #[test]
    fn ten_thousand_records_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.spool");
        let (mut spool, _) = Spool::<Rec>::open(&path).unwrap();
        let all = recs(0..10_000);
        for chunk in all.chunks(500) {
            spool.append(chunk).unwrap();
        }
        assert_eq!(spool.depth(), 10_000);
        assert_eq!(spool.read_all().unwrap(), all);
        drop(spool);
        let (spool, found) = Spool::<Rec>::open(&path).unwrap();
        assert_eq!(found, all);
        assert_eq!(spool.depth(), 10_000);
    }

    #[test]
    fn depth_counts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.spool");
        let (mut spool, _) = Spool::<Rec>::open(&path).unwrap();
        assert_eq!(spool.depth(), 0);
        spool.append(&recs(0..1)).unwrap();
        assert_eq!(spool.depth(), 1);
        spool.append(&recs(1..4)).unwrap();
        assert_eq!(spool.depth(), 4);
        spool.clear().unwrap();
        assert_eq!(spool.depth(), 0);
        spool.append(&recs(4..6)).unwrap();
        assert_eq!(spool.depth(), 2);
    }

    #[test]
    fn file_mode_is_0600_and_new_parent_0700() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state").join("ledger.spool");
        let (_spool, _) = Spool::<Rec>::open(&path).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
    }

    #[test]
    fn loose_mode_is_tightened() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.spool");
        std::fs::write(&path, b"").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let (_spool, _) = Spool::<Rec>::open(&path).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn a_second_opener_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.spool");
        let (_spool, _) = Spool::<Rec>::open(&path).unwrap();
        let err = Spool::<Rec>::open(&path).unwrap_err();
        assert!(matches!(err, SpoolError::Locked { .. }), "{err}");
    }

    #[test]
    fn io_error_names_path_and_operation() {
        let dir = tempfile::tempdir().unwrap();
        // The parent is a file: the directory cannot be created.
        let blocker = dir.path().join("file");
        std::fs::write(&blocker, b"").unwrap();
        let path = blocker.join("ledger.spool");
        let err = Spool::<Rec>::open(&path).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("ledger.spool"), "{msg}");
        assert!(msg.contains("create parent directory"), "{msg}");
    }
}
