//! The filesystem's logic driven as the kernel would, over the in-memory backend: the harness
//! here, the cases in `writes` (content and the write path) and `tree` (directories, rename,
//! scratch files, `/.herd`).

mod tree;
mod writes;

use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};

use serde_json::Value;

use super::*;
use crate::backend::{Change, Child, Error, ErrorKind, Op, Segments};
use crate::mem::MemBackend;
use crate::table::ROOT;

const O_WRITE: i32 = libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC;

/// A filesystem over a memory store that records every change the store announces.
struct Check {
    fs: Fs,
    store: Arc<MemBackend>,
    changes: Arc<Mutex<Vec<Vec<String>>>>,
    _jobs: Receiver<Job>,
}

use crate::test_path as p;

fn store() -> MemBackend {
    MemBackend::new()
        .with_max_value_bytes(10_000)
        .with_validator(Box::new(|_, v| match v.to_string().contains("REJECT") {
            true => Err(Error::new(ErrorKind::Invalid, "plugin says no")),
            false => Ok(()),
        }))
}

impl Check {
    fn new(initial: Value) -> Self {
        Self::over(store(), initial)
    }

    fn over(store: MemBackend, initial: Value) -> Self {
        let store = Arc::new(store);
        store.apply(vec![Op::Put(Vec::new(), initial)]).unwrap();
        let changes = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&changes);
        store.subscribe(Arc::new(move |c| match c {
            Change::Path(path) => seen.lock().unwrap().push(path),
            Change::All => {}
        }));
        let (tx, rx) = mpsc::channel();
        let table = Arc::new(Mutex::new(Table::new()));
        let backend: Arc<dyn Backend> = Arc::clone(&store) as Arc<dyn Backend>;
        let fs = Fs::new(backend, table, tx, Default::default(), 0, 0);
        Check {
            fs,
            store,
            changes,
            _jobs: rx,
        }
    }

    /// Look up every segment like the kernel walking a path.
    fn ino(&mut self, path: &str) -> Result<Ino> {
        let mut ino = ROOT;
        for segment in p(path) {
            ino = self.fs.lookup(ino, &segment)?.ino;
        }
        Ok(ino)
    }

    fn parent(&mut self, path: &str) -> (Ino, String) {
        let mut segments = p(path);
        let name = segments.pop().unwrap();
        (self.ino(&segments.join("/")).unwrap(), name)
    }

    /// Open (creating when missing) for writing with `flags`, as the kernel would.
    fn open_write(&mut self, path: &str, flags: i32) -> Result<u64> {
        match self.ino(path) {
            Ok(ino) => Ok(self.fs.open(ino, flags)?.fh),
            Err(_) => {
                let (parent, name) = self.parent(path);
                Ok(self.fs.create(parent, &name, flags)?.1.fh)
            }
        }
    }

    /// `printf CONTENT > path` in one write; the error of the write or of the close.
    fn put(&mut self, path: &str, content: &str) -> Result<()> {
        let fh = self.open_write(path, O_WRITE)?;
        let written = self.fs.write(fh, 0, content.as_bytes());
        let flushed = self.fs.flush(fh, || false);
        self.fs.release(fh)?;
        written?;
        flushed
    }

    fn cat(&mut self, path: &str) -> Result<String> {
        let ino = self.ino(path)?;
        let fh = self.fs.open(ino, libc::O_RDONLY)?.fh;
        let data = self.fs.read(fh, 0, 1 << 20)?;
        self.fs.release(fh)?;
        Ok(String::from_utf8(data).unwrap())
    }

    fn ls(&mut self, path: &str) -> Vec<String> {
        let ino = self.ino(path).unwrap();
        let fh = self.fs.opendir(ino).unwrap().fh;
        let names = self
            .fs
            .readdir(fh, 2)
            .unwrap()
            .iter()
            .map(|e| e.name.clone())
            .collect();
        self.fs.releasedir(fh);
        names
    }

    fn stat(&mut self, path: &str) -> Stat {
        let ino = self.ino(path).unwrap();
        self.fs.getattr(ino).unwrap()
    }

    fn xattr(&mut self, path: &str, name: &str) -> Result<String> {
        let ino = self.ino(path).unwrap();
        Ok(String::from_utf8(self.fs.getxattr(ino, name)?).unwrap())
    }

    fn value(&self, path: &str) -> Option<Value> {
        self.store.read(&p(path)).unwrap()
    }

    fn changes(&self) -> Vec<Vec<String>> {
        std::mem::take(&mut *self.changes.lock().unwrap())
    }

    fn rename(&mut self, from: &str, to: &str) -> Result<()> {
        let (fp, fname) = self.parent(from);
        let (tp, tname) = self.parent(to);
        self.fs.rename(fp, &fname, tp, &tname, 0)
    }

    fn unlink(&mut self, path: &str) -> Result<()> {
        let (parent, name) = self.parent(path);
        self.fs.unlink(parent, &name)
    }
}
