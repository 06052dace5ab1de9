//! The plugin files a node holds: components kept under `DATA/plugins/blobs/` by their sha256,
//! written whole (synced, then renamed into place), so a file found there is always complete,
//! and checked against that sha256 when read, so a damaged one is never compiled. Their
//! compiled code (`DATA/plugins/cache/`) is kept with its own sha256 beside it and checked
//! before wasmtime maps it: damaged machine code is compiled again, never run.

use super::Error;
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// Where the component with this sha256 is kept under a node's `DATA/plugins` directory.
pub fn blob_file(plugins_dir: &Path, sha256: &str) -> PathBuf {
    plugins_dir.join("blobs").join(format!("{sha256}.wasm"))
}

/// The hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Stores a component file under `plugins_dir` and answers its sha256; a file already there
/// is kept.
pub fn put(plugins_dir: &Path, bytes: &[u8]) -> Result<String, Error> {
    let sha = sha256_hex(bytes);
    let path = blob_file(plugins_dir, &sha);
    // One damaged on disk is replaced.
    if read(&path, &sha).is_ok() {
        return Ok(sha);
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let io = |what, path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { what, path, source }
    };
    let mut f = std::fs::File::create(&tmp).map_err(io("create", &tmp))?;
    f.write_all(bytes).map_err(io("write", &tmp))?;
    f.sync_all().map_err(io("sync", &tmp))?;
    std::fs::rename(&tmp, &path).map_err(io("rename into place", &path))?;
    Ok(sha)
}

/// Reads the component kept at `path` under `sha256`, refusing one whose content no longer
/// has that sha256: it was damaged on disk, and installing the plugin again replaces it.
pub fn read(path: &Path, sha256: &str) -> Result<Vec<u8>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let found = sha256_hex(&bytes);
    if found != sha256 {
        return Err(format!(
            "{} is damaged: its sha256 is {found}, not {sha256}; install the plugin again \
             (herd plugin update NAME FILE) to replace it",
            path.display()
        ));
    }
    Ok(bytes)
}

/// The file beside compiled code that holds its sha256.
fn sum_file(compiled: &Path) -> PathBuf {
    compiled.with_extension("cwasm.sha256")
}

/// Writes compiled code to `file` (through a temporary file and a rename), its sha256 first.
pub fn write_compiled(file: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = file.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::write(sum_file(file), sha256_hex(bytes))?;
    std::fs::rename(&tmp, file)
}

/// True if `file` holds exactly what [`write_compiled`] wrote there.
pub fn compiled_intact(file: &Path) -> bool {
    match (std::fs::read(file), std::fs::read_to_string(sum_file(file))) {
        (Ok(bytes), Ok(sum)) => sha256_hex(&bytes) == sum.trim(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_stored_once_under_its_sha256() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("blobs")).unwrap();
        let sha = put(dir.path(), b"\0asm component").unwrap();
        assert_eq!(sha, sha256_hex(b"\0asm component"));
        assert_eq!(sha.len(), 64);
        let file = blob_file(dir.path(), &sha);
        assert_eq!(std::fs::read(&file).unwrap(), b"\0asm component");
        assert_eq!(put(dir.path(), b"\0asm component").unwrap(), sha);
        let left: Vec<_> = std::fs::read_dir(dir.path().join("blobs"))
            .unwrap()
            .collect();
        assert_eq!(left.len(), 1, "no temporary file is left behind");
        let missing = tempfile::tempdir().unwrap();
        let err = put(missing.path(), b"x").unwrap_err();
        assert!(err.to_string().starts_with("cannot create"), "{err}");
    }

    #[test]
    fn a_damaged_file_is_refused_when_read_and_replaced_when_installed_again() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("blobs")).unwrap();
        let sha = put(dir.path(), b"\0asm component").unwrap();
        let file = blob_file(dir.path(), &sha);
        assert_eq!(read(&file, &sha).unwrap(), b"\0asm component");
        std::fs::write(&file, b"\0asm compOnent").unwrap();
        let err = read(&file, &sha).unwrap_err();
        assert!(
            err.contains("is damaged") && err.contains(&*file.to_string_lossy()),
            "{err}"
        );
        assert_eq!(put(dir.path(), b"\0asm component").unwrap(), sha);
        assert_eq!(read(&file, &sha).unwrap(), b"\0asm component");
    }

    #[test]
    fn compiled_code_with_a_flipped_byte_is_not_intact() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("x-0123.cwasm");
        assert!(!compiled_intact(&file), "nothing written");
        let code: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
        write_compiled(&file, &code).unwrap();
        assert!(compiled_intact(&file));
        for at in [0, 4_999, 9_999] {
            let mut bad = code.clone();
            bad[at] ^= 1;
            std::fs::write(&file, &bad).unwrap();
            assert!(!compiled_intact(&file), "byte {at} flipped");
        }
        std::fs::write(&file, &code).unwrap();
        std::fs::remove_file(dir.path().join("x-0123.cwasm.sha256")).unwrap();
        assert!(
            !compiled_intact(&file),
            "no sum: written by an earlier version"
        );
    }
}
