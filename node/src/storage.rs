//! Durable storage of registers and node counters in one redb file.
//!
//! Every commit is synced before it returns (`Durability::Immediate`). Deletions of covered or
//! collected registers and insertions of new ones go into the same transaction as the revision
//! counter and the clock's high-water mark, so a restart finds exactly what was acknowledged.
//! Knows nothing of the merge rule, tasks or HTTP: it stores what it is given.

use crate::store::{Register, Version};
use redb::{Database, Durability, ReadableTable, ReadableTableMetadata, TableDefinition};
use std::path::Path;

/// Registers by key (segments joined by NUL).
const REGISTERS: TableDefinition<&str, &[u8]> = TableDefinition::new("registers");
/// Counters: `revision`, `hlc_millis`, `hlc_counter`, `hlc_node`.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open database {path}: {source}")]
    Open { path: String, source: redb::DatabaseError },
    #[error("database read failed: {0}")]
    Read(String),
    #[error("database commit failed: {0}")]
    Commit(String),
    #[error("database holds a corrupt register at {key:?}: {source}")]
    Corrupt { key: String, source: crate::store::register::DecodeError },
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
            .map_err(|source| Error::Open { path: path.display().to_string(), source })?;
        Ok(Storage { db })
    }

    /// Reads every register and the counters.
    pub fn load(&self) -> Result<Loaded, Error> {
        let tx = self.db.begin_read().map_err(read_err)?;
        let mut registers = Vec::new();
        match tx.open_table(REGISTERS) {
            Ok(table) => {
                registers.reserve(table.len().map_err(read_err)? as usize);
                for row in table.iter().map_err(read_err)? {
                    let (k, v) = row.map_err(read_err)?;
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
        let mut revision = 0;
        let mut high_water = Version::ZERO;
        match tx.open_table(META) {
            Ok(meta) => {
                let get = |k: &str| -> Result<u64, Error> {
                    Ok(meta.get(k).map_err(read_err)?.map(|v| v.value()).unwrap_or(0))
                };
                revision = get("revision")?;
                high_water = Version {
                    millis: get("hlc_millis")?,
                    counter: u32::try_from(get("hlc_counter")?).unwrap_or(u32::MAX),
                    node: get("hlc_node")?,
                };
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(read_err(e)),
        }
        Ok(Loaded { registers, revision, high_water })
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
            let mut meta = tx.open_table(META).map_err(commit_err)?;
            meta.insert("revision", c.revision).map_err(commit_err)?;
            meta.insert("hlc_millis", c.high_water.millis).map_err(commit_err)?;
            meta.insert("hlc_counter", u64::from(c.high_water.counter)).map_err(commit_err)?;
            meta.insert("hlc_node", c.high_water.node).map_err(commit_err)?;
        }
        tx.commit().map_err(commit_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Kind;

    #[test]
    fn commits_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("store.redb");
        let v = Version { millis: 5, counter: 1, node: 7 };
        let a = Register { kind: Kind::Leaf("1".into()), version: v, expires: Some(9) };
        let b = Register { kind: Kind::Deleted, version: v, expires: None };
        {
            let s = Storage::open(&file, 1 << 20).unwrap();
            let empty = s.load().unwrap();
            assert!(empty.registers.is_empty());
            assert_eq!(empty.revision, 0);
            s.commit(&Commit { puts: vec![("a", &a), ("b", &b)], revision: 3, high_water: v, ..Commit::default() })
                .unwrap();
            s.commit(&Commit { removes: vec!["b"], revision: 4, high_water: v, ..Commit::default() }).unwrap();
        }
        let s = Storage::open(&file, 1 << 20).unwrap();
        let l = s.load().unwrap();
        assert_eq!(l.registers, vec![("a".into(), a)]);
        assert_eq!(l.revision, 4);
        assert_eq!(l.high_water, v);
    }
}
