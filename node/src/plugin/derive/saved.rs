//! A derive plugin's outputs kept across restarts: saved after each announced change to
//! `plugins/outputs/<name>.json` in the data directory (with the revision that announced
//! them), and seeded into memory before the plugin's task starts.

use super::Found;
use crate::clock::now_ms;
use crate::plugin::Plugins;
use crate::store::Path;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::PathBuf;
use tokio_util::sync::CancellationToken;

/// A plugin's outputs as saved in the data directory.
#[derive(Serialize, Deserialize)]
struct Saved {
    plugin: String,
    prefix: String,
    /// The revision that announced them to watchers.
    revision: u64,
    /// When the run that made them ended (milliseconds since the Unix epoch).
    #[serde(default)]
    updated_ms: u64,
    tree: Value,
}

/// Where `plugin`'s outputs are saved.
fn saved_file(plugins: &Plugins, plugin: &str) -> PathBuf {
    plugins.dir().join("outputs").join(format!("{plugin}.json"))
}

/// The saved outputs of `plugin` for `prefix` (none if saved for another prefix, or
/// unreadable: the plugin's first run then starts from nothing, as on a new node).
fn load_saved(plugins: &Plugins, plugin: &str, prefix: &Path) -> Option<Saved> {
    let file = saved_file(plugins, plugin);
    let text = match std::fs::read(&file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(plugin, file = %file.display(), error = %e, "saved outputs unreadable");
            return None;
        }
    };
    match serde_json::from_slice::<Saved>(&text) {
        Ok(s) if s.plugin == plugin && s.prefix == prefix.to_string() && s.tree.is_object() => {
            Some(s)
        }
        Ok(_) => None,
        Err(e) => {
            tracing::warn!(plugin, file = %file.display(), error = %e, "saved outputs unreadable");
            None
        }
    }
}

/// Saves `plugin`'s outputs `tree`, announced at `revision` (unless its task was stopped:
/// a newer task or the plugin's removal owns the file then). A file that cannot be written is
/// removed, so that the next start announces the outputs whole rather than trust it.
pub(super) async fn save(
    plugins: &Plugins,
    plugin: &str,
    prefix: &Path,
    tree: Value,
    revision: u64,
    cancel: &CancellationToken,
) {
    let file = saved_file(plugins, plugin);
    let saved = Saved {
        plugin: plugin.to_owned(),
        prefix: prefix.to_string(),
        revision,
        updated_ms: now_ms(),
        tree,
    };
    let (cancel, node) = (cancel.clone(), plugins.cancel().clone());
    let written = tokio::task::spawn_blocking(move || {
        // A task stopped because its plugin was updated or removed leaves the file to the new
        // task (or to the removal). One stopped because the node shuts down saves what it
        // announced, or the next start would announce the outputs whole.
        if cancel.is_cancelled() && !node.is_cancelled() {
            return Ok(());
        }
        let text = serde_json::to_vec(&saved).map_err(std::io::Error::other)?;
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let written = crate::tls::write_atomic(&file, &text, 0o600);
        if written.is_err() {
            let _ = std::fs::remove_file(&file);
        }
        written.map_err(std::io::Error::other)
    })
    .await;
    let error = match written {
        Ok(Ok(())) => return,
        Ok(Err(e)) => e.to_string(),
        Err(e) => e.to_string(),
    };
    tracing::warn!(
        plugin,
        error,
        "could not save the outputs; the next start announces them whole"
    );
}

/// Forgets the saved outputs of plugins other than `keep` (removed plugins).
pub(crate) fn forget_saved(plugins: &Plugins, keep: &[&str]) {
    let dir = plugins.dir().join("outputs");
    let Ok(files) = std::fs::read_dir(&dir) else {
        return;
    };
    for f in files.flatten() {
        let name = f.file_name().to_string_lossy().into_owned();
        // Only plugins' files (not a temporary of a save under way).
        let Some(stem) = name
            .strip_suffix(".json")
            .filter(|_| !name.starts_with('.'))
        else {
            continue;
        };
        if !keep.contains(&stem) {
            let _ = std::fs::remove_file(f.path());
        }
    }
}

/// What a derive task starts from.
#[derive(Debug, Clone, Copy)]
pub(super) enum Start {
    /// Outputs already in memory (a new version of the plugin): watchers know them.
    Memory,
    /// Outputs saved before the node started, announced at this revision.
    Saved(u64),
    /// Nothing (a new plugin, a new node, or outputs that could not be saved).
    Nothing,
}

/// Seeds the outputs of a task about to start, from memory or the saved file. The saved
/// outputs become visible under the state lock, so a watch has them in its starting state or
/// not at all.
pub(super) fn seed_saved(plugins: &Plugins, plugin: &str, sha256: &str, prefix: &Path) -> Start {
    if !matches!(plugins.outputs().get(prefix), Found::Outside) {
        return Start::Memory;
    }
    let Some(saved) = load_saved(plugins, plugin, prefix) else {
        return Start::Nothing;
    };
    plugins.db().locked(|| {
        let outputs = plugins.outputs();
        outputs.seed(plugin, sha256, prefix, saved.tree, saved.updated_ms)
    });
    Start::Saved(saved.revision)
}
