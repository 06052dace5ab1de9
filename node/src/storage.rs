//! Durable storage of registers and node counters in one redb file.
//!
//! Every commit is synced before it returns (`Durability::Immediate`). Deletions of covered or
//! collected registers and insertions of new ones go into the same transaction as the revision
//! counter and the clock's high-water mark, so a restart finds exactly what was acknowledged.
//! Knows nothing of the merge rule, tasks or HTTP: it stores what it is given.

use crate::store::{Register, Version};
use redb::{Database, Durability, ReadableTable, ReadableTableMetadata, TableDefinition};
use std::path::Path;

/// Registers by key (segments joined by NUL), plus the counters under [`META_KEY`]: one table, so
/// a commit rewrites one B-tree.
const REGISTERS: TableDefinition<&str, &[u8]> = TableDefinition::new("registers");
/// Where the counters live: no register key starts with NUL (segments are never empty).
const META_KEY: &str = "\0meta";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open database {path}: {source}")]
    Open {
        path: String,
        source: redb::DatabaseError,
    },
    #[error("database read failed: {0}")]
    Read(String),
    #[error("database commit failed: {0}")]
    Commit(String),
    #[error("database holds a corrupt register at {key:?}: {source}")]
    Corrupt {
        key: String,
        source: crate::store::register::DecodeError,
    },
}

fn read_err(e: impl std::fmt::Display) -> Error {
    Error::Read(e.to_string())
}

fn commit_err(e: impl std::fmt::Display) -> Error {
    Error::Commit(e.to_string())
}

/// What a restart finds.
pub struct Loaded {
    pub registers: Vec<(Box<str>, Register)>,
    pub revision: u64,
    pub high_water: Version,
}

/// One group commit.
#[derive(Default)]
pub struct Commit<'a> {
    /// Keys to delete (applied before `puts`).
    pub removes: Vec<&'a str>,
    pub puts: Vec<(&'a str, &'a Register)>,
    /// The node's revision after this commit.
    pub revision: u64,
    /// The clock's high-water mark after this commit.
    pub high_water: Version,
}

/// The open database.
pub struct Storage {
    db: Database,
}

impl Storage {
    /// Opens (or creates) the database file. `cache_bytes` bounds redb's page cache: the store
    /// keeps its own in-memory copy, so the cache only needs to hold the B-tree's upper levels.
    pub fn open(path: &Path, cache_bytes: usize) -> Result<Storage, Error> {
        let db = Database::builder()
            .set_cache_size(cache_bytes)
            .create(path)
            .map_err(|source| Error::Open {
                path: path.display().to_string(),
                source,
            })?;
        Ok(Storage { db })
    }

    /// Reads every register and the counters.
    pub fn load(&self) -> Result<Loaded, Error> {
        let tx = self.db.begin_read().map_err(read_err)?;
        let mut registers = Vec::new();
        let mut revision = 0;
        let mut high_water = Version::ZERO;
        match tx.open_table(REGISTERS) {
            Ok(table) => {
                registers.reserve(table.len().map_err(read_err)? as usize);
                for row in table.iter().map_err(read_err)? {
                    let (k, v) = row.map_err(read_err)?;
                    if k.value() == META_KEY {
                        (revision, high_water) = decode_meta(v.value())?;
                        continue;
                    }
                    let reg = Register::decode(v.value()).map_err(|source| Error::Corrupt {
                        key: k.value().replace('\0', "/"),
                        source,
                    })?;
                    registers.push((Box::<str>::from(k.value()), reg));
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(read_err(e)),
        }
        Ok(Loaded {
            registers,
            revision,
            high_water,
        })
    }

    /// Applies one group commit and syncs it to disk before returning.
    pub fn commit(&self, c: &Commit<'_>) -> Result<(), Error> {
        let mut tx = self.db.begin_write().map_err(commit_err)?;
        tx.set_durability(Durability::Immediate);
        {
            let mut regs = tx.open_table(REGISTERS).map_err(commit_err)?;
            for k in &c.removes {
                regs.remove(*k).map_err(commit_err)?;
            }
            let mut buf = Vec::with_capacity(256);
            for (k, r) in &c.puts {
                buf.clear();
                r.encode(&mut buf);
                regs.insert(*k, buf.as_slice()).map_err(commit_err)?;
            }
            regs.insert(META_KEY, encode_meta(c.revision, c.high_water).as_slice())
                .map_err(commit_err)?;
        }
        tx.commit().map_err(commit_err)
    }
}

/// The counters: revision, then the clock's high-water mark (millis, counter, node).
fn encode_meta(revision: u64, hw: Version) -> [u8; 28] {
    let mut b = [0u8; 28];
    b[..8].copy_from_slice(&revision.to_le_bytes());
    b[8..16].copy_from_slice(&hw.millis.to_le_bytes());
    b[16..20].copy_from_slice(&hw.counter.to_le_bytes());
    b[20..].copy_from_slice(&hw.node.to_le_bytes());
    b
}

fn decode_meta(b: &[u8]) -> Result<(u64, Version), Error> {
    let b: &[u8; 28] = b
        .try_into()
        .map_err(|_| Error::Read("the counters record has the wrong size".into()))?;
    let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8-byte slice"));
    let counter = u32::from_le_bytes(b[16..20].try_into().expect("4-byte slice"));
    Ok((
        u64_at(0),
        Version {
            millis: u64_at(8),
            counter,
            node: u64_at(20),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Kind;

    #[test]
    fn commits_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("store.redb");
        let v = Version {
            millis: 5,
            counter: 1,
            node: 7,
        };
        let a = Register {
            kind: Kind::Leaf("1".into()),
            version: v,
            expires: Some(9),
        };
        let b = Register {
            kind: Kind::Deleted,
            version: v,
            expires: None,
        };
        {
            let s = Storage::open(&file, 1 << 20).unwrap();
            let empty = s.load().unwrap();
            assert!(empty.registers.is_empty());
            assert_eq!(empty.revision, 0);
            s.commit(&Commit {
                puts: vec![("a", &a), ("b", &b)],
                revision: 3,
                high_water: v,
                ..Commit::default()
            })
            .unwrap();
            s.commit(&Commit {
                removes: vec!["b"],
                revision: 4,
                high_water: v,
                ..Commit::default()
            })
            .unwrap();
        }
        let s = Storage::open(&file, 1 << 20).unwrap();
        let l = s.load().unwrap();
        assert_eq!(l.registers, vec![("a".into(), a)]);
        assert_eq!(l.revision, 4);
        assert_eq!(l.high_water, v);
    }
}
