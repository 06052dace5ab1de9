//! Directories, rename, scratch files and the control directory.

use serde_json::json;

use super::*;

#[test]
fn directories_are_made_and_removed() {
    let mut c = Check::new(json!({}));
    let root = ROOT;
    c.fs.mkdir(root, "a").unwrap();
    assert_eq!(c.fs.mkdir(root, "a"), Err(Errno(libc::EEXIST)));
    c.put("a/x", "1").unwrap();
    assert_eq!(c.stat("a").nlink, 1, "a directory's links are not counted");
    assert_eq!(c.fs.rmdir(root, "a"), Err(Errno(libc::ENOTEMPTY)));
    assert_eq!(c.unlink("a"), Err(Errno(libc::EISDIR)));
    c.unlink("a/x").unwrap();
    c.fs.rmdir(root, "a").unwrap();
    assert_eq!(c.value(""), Some(json!({})));
}

#[test]
fn rename_is_one_update_for_keys_and_directories() {
    let mut c = Check::new(json!({"a": 1, "b": 2, "d": {"x": 1}, "e": {}}));
    c.rename("a", "b").unwrap();
    assert_eq!(c.value(""), Some(json!({"b": 1, "d": {"x": 1}, "e": {}})));
    c.rename("d", "e").unwrap();
    assert_eq!(c.value(""), Some(json!({"b": 1, "e": {"x": 1}})));
    assert_eq!(c.rename("b", "e"), Err(Errno(libc::EISDIR)));
    assert_eq!(c.rename("e", "e/sub"), Err(Errno(libc::EINVAL)));
    let (b, e) = (c.ino("b").unwrap(), c.ino("e").unwrap());
    c.put("z", "1").unwrap();
    assert_eq!(
        c.fs.rename(ROOT, "z", ROOT, "b", 1),
        Err(Errno(libc::EEXIST))
    );
    assert_eq!(c.ino("e/x").unwrap(), c.ino("e/x").unwrap());
    c.changes();
    assert_eq!(c.fs.rename(e, "x", b, "y", 0), Err(Errno(libc::ENOTDIR)));
    c.rename("e", "f").unwrap();
    assert_eq!(c.changes(), [p("e"), p("f")]);
    assert_eq!(c.cat("f/x").unwrap(), "1\n");
}

#[test]
fn a_directory_renamed_here_leaves_the_replay_nothing_to_announce() {
    let mut c = Check::new(json!({"d": {"x": 1, "s": {"y": 2}}}));
    c.ino("d/s/y").unwrap(); // the kernel holds d and d/s: their listings know no contents
    c.rename("d", "e").unwrap();
    c.fs.mkdir(ROOT, "m").unwrap();
    for change in c.changes() {
        let planned = crate::replay::plan(&c.fs.table, c.store.as_ref(), &Change::Path(change));
        assert_eq!(
            planned,
            [],
            "the process that renamed raised its own events"
        );
    }
    // A change from elsewhere is still announced.
    c.store.apply(vec![Op::Put(p("e/s/y"), json!(3))]).unwrap();
    let planned = crate::replay::plan(&c.fs.table, c.store.as_ref(), &Change::Path(p("e/s/y")));
    assert_eq!(planned.len(), 1);
}

#[test]
fn the_replay_never_removes_a_directory_holding_a_file_being_written() {
    let mut c = Check::new(json!({"d": {"x": 1}}));
    let fh = c.open_write("d/new", O_WRITE).unwrap();
    c.fs.write(fh, 0, b"2").unwrap();
    c.store.apply(vec![Op::Delete(p("d"))]).unwrap();
    assert_eq!(c.fs.echo_remove(ROOT, "d"), Err(Errno(libc::ENOTEMPTY)));
    c.fs.release(fh).unwrap();
    assert_eq!(c.value("d/new"), Some(json!(2)));
}

#[test]
fn sed_in_place_never_shows_its_temp_file_to_the_store() {
    let mut c = Check::new(json!({"x": "abc"}));
    let fh = c
        .open_write("sedAb12Z9", libc::O_RDWR | libc::O_CREAT | libc::O_EXCL)
        .unwrap();
    c.fs.write(fh, 0, b"abd\n").unwrap();
    c.fs.release(fh).unwrap();
    assert_eq!(c.cat("sedAb12Z9").unwrap(), "abd\n");
    assert_eq!(c.ls(""), [".herd", "sedAb12Z9", "x"]);
    c.rename("sedAb12Z9", "x").unwrap();
    assert_eq!(c.value(""), Some(json!({"x": "abd"})));
    assert_eq!(c.changes(), [p("x")]);
    assert_eq!(c.ls(""), [".herd", "x"]);
}

#[test]
fn vim_save_keeps_the_key_in_place_for_peers() {
    let mut c = Check::new(json!({"d": {"f": "old"}}));
    let swap = c
        .open_write("d/.f.swp", libc::O_RDWR | libc::O_CREAT | libc::O_EXCL)
        .unwrap();
    c.fs.write(swap, 0, &[0; 4096]).unwrap();
    c.fs.fsync(swap).unwrap();
    c.fs.flush(swap, || false).unwrap();
    c.fs.write(swap, 0, b"b0VIM").unwrap();
    assert_eq!(c.cat("d/.f.swp").unwrap().len(), 4096);
    let probe = c
        .open_write("d/4913", libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL)
        .unwrap();
    c.fs.release(probe).unwrap();
    c.unlink("d/4913").unwrap();
    c.rename("d/f", "d/f~").unwrap();
    assert_eq!(
        c.ino("d/f"),
        Err(Errno(libc::ENOENT)),
        "looks renamed locally"
    );
    assert_eq!(c.ls("d"), [".f.swp", "f~"]);
    assert_eq!(c.cat("d/f~").unwrap(), "old\n");
    c.put("d/f", "new\n").unwrap();
    c.unlink("d/f~").unwrap();
    c.fs.release(swap).unwrap();
    c.unlink("d/.f.swp").unwrap();
    assert_eq!(c.value("d"), Some(json!({"f": "new"})));
    assert_eq!(
        c.changes(),
        [p("d/f")],
        "peers saw one update and no deletion"
    );
}

#[test]
fn a_key_renamed_to_a_backup_is_deleted_when_the_backup_goes() {
    let mut c = Check::new(json!({"f": 1, "g": 2}));
    c.rename("f", "f~").unwrap();
    assert_eq!(c.value("f"), Some(json!(1)));
    c.unlink("f~").unwrap();
    assert_eq!(c.value(""), Some(json!({"g": 2})));
    // Renaming the backup back restores the key without deleting or rewriting it.
    c.rename("g", "g~").unwrap();
    c.changes();
    c.rename("g~", "g").unwrap();
    assert_eq!(c.value(""), Some(json!({"g": 2})));
    assert!(c.changes().is_empty());
    assert_eq!(c.cat("g").unwrap(), "2\n");
    // Unmounting carries out deferred deletions.
    c.rename("g", "#g#").unwrap();
    c.fs.destroy();
    assert_eq!(c.value(""), Some(json!({})));
}

/// A store that also holds a `/.herd` subtree, as `node` does.
struct WithReserved(MemBackend);

impl Backend for WithReserved {
    fn get(&self, path: &Segments) -> std::result::Result<Option<Node>, Error> {
        self.0.get(path)
    }
    fn list(&self, path: &Segments) -> std::result::Result<Vec<Child>, Error> {
        let mut children = self.0.list(path)?;
        if path.is_empty() {
            children.push(Child {
                name: ".herd".into(),
                is_dir: true,
            });
        }
        Ok(children)
    }
    fn read(&self, path: &Segments) -> std::result::Result<Option<Value>, Error> {
        self.0.read(path)
    }
    fn check(&self, path: &Segments, value: &Value) -> std::result::Result<(), Error> {
        self.0.check(path, value)
    }
    fn apply(&self, ops: Vec<Op>) -> std::result::Result<(), Error> {
        self.0.apply(ops)
    }
    fn subscribe(&self, sink: crate::backend::ChangeSink) {
        self.0.subscribe(sink)
    }
    fn status(&self) -> Value {
        json!({"ok": true})
    }
    fn max_value_bytes(&self) -> usize {
        self.0.max_value_bytes()
    }
}

#[test]
fn the_control_directory_is_synthesized_and_read_only() {
    let store = Arc::new(WithReserved(MemBackend::new()));
    let (tx, _rx) = mpsc::channel();
    let table = Arc::new(Mutex::new(Table::new()));
    let mut fs = Fs::new(store, table, tx, Default::default(), 0, 0);
    let fh = fs.opendir(ROOT).unwrap().fh;
    let names: Vec<_> = fs
        .readdir(fh, 0)
        .unwrap()
        .iter()
        .map(|e| e.name.clone())
        .collect();
    assert_eq!(names, [".", "..", ".herd"]);
    let dir = fs.lookup(ROOT, ".herd").unwrap().ino;
    let status = fs.lookup(dir, "status").unwrap();
    assert_eq!((status.perm, status.volatile), (0o444, true));
    let opened = fs.open(status.ino, libc::O_RDONLY).unwrap();
    assert_eq!(opened.flags, FOPEN_DIRECT_IO);
    assert_eq!(
        fs.read(opened.fh, 0, 100).unwrap(),
        b"{\n  \"ok\": true\n}\n"
    );
    assert_eq!(
        fs.open(status.ino, libc::O_WRONLY).unwrap_err(),
        Errno(libc::EROFS)
    );
    assert_eq!(
        fs.create(dir, "x", O_WRITE).unwrap_err(),
        Errno(libc::EROFS)
    );
    assert_eq!(fs.mkdir(dir, "x").unwrap_err(), Errno(libc::EROFS));
    assert_eq!(fs.unlink(dir, "status").unwrap_err(), Errno(libc::EROFS));
    assert_eq!(fs.lookup(dir, "tokens").unwrap_err(), Errno(libc::ENOENT));
}
