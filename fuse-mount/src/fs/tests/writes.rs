//! Content and the write path.

use serde_json::json;

use super::*;

#[test]
fn echo_stores_json_or_text_and_cat_shows_it() {
    let mut c = Check::new(json!({}));
    c.put("port", "8080\n").unwrap();
    c.put("name", "hi\n").unwrap();
    c.put("quoted", "\"8080\"\n").unwrap();
    assert_eq!(
        c.value(""),
        Some(json!({"port": 8080, "name": "hi", "quoted": "8080"}))
    );
    assert_eq!(c.cat("port").unwrap(), "8080\n");
    assert_eq!(c.cat("name").unwrap(), "hi\n");
    assert_eq!(c.cat("quoted").unwrap(), "\"8080\"\n");
    assert_eq!(c.stat("quoted").size, 7);
    assert_eq!(
        c.put("bin", "\u{0}ok").map(|_| c.value("bin")),
        Ok(Some(json!("\u{0}ok")))
    );
    let fh = c.open_write("raw", O_WRITE).unwrap();
    assert_eq!(c.fs.write(fh, 0, b"\xff\xfe"), Err(Errno(libc::EINVAL)));
}

/// Configuration-management runs and `rsync` rewrite files that did not change: writing a
/// key's current value again, in place or through a hidden temporary renamed over it, sends
/// the store nothing (no new version, no event).
#[test]
fn rewriting_the_current_value_changes_nothing() {
    let mut c = Check::new(json!({"port": 8080}));
    c.changes();
    c.put("port", "8080\n").unwrap();
    c.put("port", "8080").unwrap();
    c.put(".port.Xy3aQ9", "8080\n").unwrap();
    c.rename(".port.Xy3aQ9", "port").unwrap();
    assert_eq!(c.changes(), Vec::<Vec<String>>::new(), "nothing was sent");
    assert_eq!(c.cat("port").unwrap(), "8080\n");
    assert_eq!(c.ls(""), [".herd", "port"], "the temporary is gone");
    // A different value, even one equal as a number, is a change.
    c.put("port", "8080.0").unwrap();
    assert_eq!(c.changes(), [p("port")]);
    assert_eq!(c.value("port"), Some(json!(8080.0)));
}

/// A hidden file (a leading dot) stays in the mount: rsync's and atomic-write helpers'
/// temporaries never reach the store, and renaming one over a key is one write of that key.
/// A hidden name the store already holds is a key like any other.
#[test]
fn hidden_files_stay_local_until_renamed_onto_a_key() {
    let mut c = Check::new(json!({".pre": 1}));
    c.changes();
    c.put(".env", "x").unwrap();
    assert_eq!(c.cat(".env").unwrap(), "x", "kept as written");
    assert_eq!(c.value(".env"), None);
    c.put(".conf.tmp", "{\"a\": 1}").unwrap();
    assert_eq!(
        c.changes(),
        Vec::<Vec<String>>::new(),
        "nothing reached the store"
    );
    c.rename(".conf.tmp", "conf").unwrap();
    assert_eq!(c.value("conf"), Some(json!({"a": 1})));
    assert_eq!(c.changes(), [p("conf")], "one write of the final key");
    c.put(".pre", "2").unwrap();
    assert_eq!(
        c.value(".pre"),
        Some(json!(2)),
        "a hidden key the store holds stays a key"
    );
}

#[test]
fn a_json_object_written_into_a_file_makes_a_directory() {
    let mut c = Check::new(json!({}));
    c.put("app", "{\"port\": 1, \"db\": {\"host\": \"h\"}}\n")
        .unwrap();
    assert_eq!(c.cat("app/db/host").unwrap(), "h\n");
    assert_eq!(c.ls("app"), ["db", "port"]);
}

#[test]
fn a_created_file_is_pending_until_its_first_commit() {
    let mut c = Check::new(json!({}));
    let (root, _) = c.parent("new");
    let (stat, opened) = c.fs.create(root, "new", O_WRITE).unwrap();
    assert_eq!((stat.size, stat.kind), (0, Kind::File));
    assert_eq!(
        c.value("new"),
        None,
        "nothing reaches the store before the content"
    );
    assert_eq!(c.ls(""), [".herd", "new"]);
    c.fs.write(opened.fh, 0, &[b'x'; 4096]).unwrap();
    assert_eq!(
        c.fs.getattr(stat.ino).unwrap().size,
        4096,
        "stat shows the unsaved buffer"
    );
    c.fs.write(opened.fh, 4096, b"y\n").unwrap();
    c.fs.flush(opened.fh, || false).unwrap();
    c.fs.release(opened.fh).unwrap();
    assert_eq!(
        c.value("new"),
        Some(json!(format!("{}y", "x".repeat(4096))))
    );
    assert_eq!(c.changes(), [p("new")], "many writes, one update");
    // `touch`: create and close without writing stores the empty string.
    let fh = c
        .open_write("empty", libc::O_WRONLY | libc::O_CREAT)
        .unwrap();
    c.fs.release(fh).unwrap();
    assert_eq!(c.value("empty"), Some(json!("")));
}

#[test]
fn a_rejected_write_fails_at_write_and_leaves_the_old_value() {
    let mut c = Check::new(json!({"k": "old"}));
    assert_eq!(c.put("k", "REJECT\n"), Err(Errno(libc::EINVAL)));
    assert_eq!(c.value("k"), Some(json!("old")));
    assert_eq!(c.put("new", "REJECT\n"), Err(Errno(libc::EINVAL)));
    assert_eq!(
        c.ino("new"),
        Err(Errno(libc::ENOENT)),
        "the pending file is gone"
    );
    let error = c.xattr("k", ERROR_XATTR).unwrap();
    assert!(error.ends_with(" EINVAL plugin says no"), "{error}");
    let k = c.ino("k").unwrap();
    assert_eq!(c.fs.listxattr(k), b"user.herd.error\0");
    assert_eq!(c.xattr("k", "user.other"), Err(Errno(libc::ENODATA)));
    let errors = c.cat(".herd/errors").unwrap();
    assert_eq!(errors.lines().count(), 2);
    assert!(
        errors
            .lines()
            .next()
            .unwrap()
            .contains(" /k EINVAL plugin says no"),
        "{errors}"
    );
    c.put("k", "fine\n").unwrap();
    assert_eq!(c.xattr("k", ERROR_XATTR), Err(Errno(libc::ENODATA)));
}

#[test]
fn a_value_over_the_limit_fails_at_write_and_never_commits_a_part() {
    let mut c = Check::new(json!({"k": 1}));
    let fh = c.open_write("k", O_WRITE).unwrap();
    c.fs.write(fh, 0, &[b'a'; 8192]).unwrap();
    assert_eq!(c.fs.write(fh, 8192, &[b'a'; 8192]), Err(Errno(libc::EFBIG)));
    c.fs.flush(fh, || false).unwrap();
    c.fs.release(fh).unwrap();
    assert_eq!(c.value("k"), Some(json!(1)));
}

#[test]
fn a_rejection_seen_only_at_close_fails_the_close() {
    let mut c = Check::new(json!({"k": 1}));
    let fh = c.open_write("k", O_WRITE).unwrap();
    c.fs.write(fh, 0, &[b'a'; 4096]).unwrap(); // a whole page: not checked alone
    c.fs.write(fh, 4096, b"REJECT").unwrap();
    assert_eq!(c.fs.flush(fh, || false), Err(Errno(libc::EINVAL)));
    c.fs.release(fh).unwrap();
    assert_eq!(c.value("k"), Some(json!(1)));
}

#[test]
fn append_and_truncate_work_on_the_shown_content() {
    let mut c = Check::new(json!({"log": "a", "port": 8080}));
    let fh = c
        .open_write("log", libc::O_WRONLY | libc::O_APPEND)
        .unwrap();
    c.fs.write(fh, 0, b"b\n").unwrap();
    c.fs.release(fh).unwrap();
    assert_eq!(c.value("log"), Some(json!("a\nb")));
    let port = c.ino("port").unwrap();
    assert_eq!(c.fs.setattr(port, Some(2), None).unwrap().size, 3);
    assert_eq!(c.value("port"), Some(json!(80)));
    // `truncate -s 0`: open, ftruncate, close.
    let fh = c.open_write("port", libc::O_WRONLY).unwrap();
    c.fs.setattr(port, Some(0), Some(fh)).unwrap();
    c.fs.release(fh).unwrap();
    assert_eq!(c.value("port"), Some(json!("")));
    // `touch` of an existing file changes nothing.
    c.changes();
    c.fs.setattr(port, None, None).unwrap();
    assert!(c.changes().is_empty());
}

#[test]
fn a_file_unlinked_while_open_is_not_committed() {
    let mut c = Check::new(json!({}));
    let fh = c.open_write("gone", O_WRITE).unwrap();
    c.fs.write(fh, 0, b"1").unwrap();
    c.unlink("gone").unwrap();
    c.fs.release(fh).unwrap();
    assert_eq!(c.value(""), Some(json!({})));
}

#[test]
fn open_keeps_the_page_cache_only_for_unchanged_content() {
    let mut c = Check::new(json!({"k": 1}));
    let ino = c.ino("k").unwrap();
    let first = c.fs.open(ino, libc::O_RDONLY).unwrap();
    assert_eq!(first.flags, FOPEN_NOFLUSH);
    let second = c.fs.open(ino, libc::O_RDONLY).unwrap();
    assert_eq!(second.flags, FOPEN_NOFLUSH | FOPEN_KEEP_CACHE);
    c.put("k", "2").unwrap();
    assert_eq!(c.fs.open(ino, libc::O_RDONLY).unwrap().flags, FOPEN_NOFLUSH);
}

#[test]
fn bash_redirection_commits_only_what_echo_wrote() {
    // bash: open(O_TRUNC), dup2, close the first descriptor, write, close.
    let mut c = Check::new(json!({"k": "old", "e": 1}));
    let fh = c.open_write("k", O_WRITE).unwrap();
    c.fs.flush(fh, || false).unwrap();
    assert_eq!(
        c.value("k"),
        Some(json!("old")),
        "the first close stores nothing"
    );
    assert_eq!(c.fs.write(fh, 0, b"REJECT\n"), Err(Errno(libc::EINVAL)));
    c.fs.flush(fh, || false).unwrap();
    assert_eq!(c.stat("k").size, 4, "the refused buffer is not shown");
    c.fs.release(fh).unwrap();
    assert_eq!(c.value("k"), Some(json!("old")));
    // `: > e` empties the key when the handle is released.
    let fh = c.open_write("e", O_WRITE).unwrap();
    c.fs.flush(fh, || false).unwrap();
    c.fs.flush(fh, || false).unwrap();
    assert_eq!(c.stat("e").size, 0);
    c.fs.release(fh).unwrap();
    assert_eq!(c.value("e"), Some(json!("")));
}

#[test]
fn a_touch_closing_after_another_writer_does_not_empty_the_key() {
    let mut c = Check::new(json!({}));
    let touch = c.open_write("f", libc::O_WRONLY | libc::O_CREAT).unwrap();
    let fh = c.open_write("f", libc::O_WRONLY | libc::O_APPEND).unwrap();
    c.fs.write(fh, 0, b"x\n").unwrap();
    c.fs.release(fh).unwrap();
    c.fs.release(touch).unwrap();
    assert_eq!(c.value("f"), Some(json!("x")));
}

#[test]
fn a_writer_killed_mid_write_stores_nothing() {
    let mut c = Check::new(json!({"ip": "10.0.0.1"}));
    // The kernel closes a killed process's files: flush comes from a killed task.
    let fh = c.open_write("ip", libc::O_WRONLY | libc::O_TRUNC).unwrap();
    c.fs.write(fh, 0, b"10.0.0.").unwrap();
    c.fs.flush(fh, || true).unwrap();
    c.fs.release(fh).unwrap();
    assert_eq!(
        c.value("ip"),
        Some(json!("10.0.0.1")),
        "the old value stays"
    );
    assert!(c.changes().is_empty());
    let error = c.xattr("ip", ERROR_XATTR).unwrap();
    assert!(error.contains("killed"), "{error}");
    // A file it created is not left behind.
    let fh = c.open_write("new", libc::O_WRONLY | libc::O_CREAT).unwrap();
    c.fs.write(fh, 0, b"half").unwrap();
    c.fs.flush(fh, || true).unwrap();
    c.fs.release(fh).unwrap();
    assert_eq!(c.ino("new"), Err(Errno(libc::ENOENT)));
    // A write after the killed close (another descriptor of the same open file, in a process
    // that lives on) commits as usual.
    let fh = c.open_write("ip", libc::O_WRONLY | libc::O_TRUNC).unwrap();
    c.fs.write(fh, 0, b"10.0.0.").unwrap();
    c.fs.flush(fh, || true).unwrap();
    c.fs.write(fh, 7, b"2\n").unwrap();
    c.fs.flush(fh, || false).unwrap();
    c.fs.release(fh).unwrap();
    assert_eq!(c.value("ip"), Some(json!("10.0.0.2")));
}
