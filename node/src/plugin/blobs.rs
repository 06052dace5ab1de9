//! The plugin files a node holds: components kept under `DATA/plugins/blobs/` by their sha256,
//! written whole (synced, then renamed into place), so a file found there is always complete.

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
    if path.exists() {
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
}
