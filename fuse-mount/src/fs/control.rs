//! The read-only control directory `/.herd`, synthesized by the mount (the store's own `/.herd`
//! subtree is never shown): `status` (the node's status) and `errors` (the mount's last
//! rejections). Knows nothing of how the store keeps `/.herd`.

use std::collections::BTreeMap;
use std::time::SystemTime;

use super::{Fs, Stat};
use crate::table::{Ino, Kind};

/// The control directory's name at the root.
pub(crate) const DIR: &str = ".herd";

/// A node of the control directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Node {
    /// `/.herd`
    Dir,
    /// `/.herd/status`: the node's status as pretty JSON.
    Status,
    /// `/.herd/errors`: the last rejected operations, one a line.
    Errors,
}

/// Is `path` in the control directory (or the directory itself)?
pub(crate) fn is_control(path: &[String]) -> bool {
    path.first().is_some_and(|s| s == DIR)
}

impl Node {
    /// The node at `path`, if any.
    pub fn at(path: &[String]) -> Option<Node> {
        match path {
            [dir] if dir == DIR => Some(Node::Dir),
            [dir, name] if dir == DIR && name == "status" => Some(Node::Status),
            [dir, name] if dir == DIR && name == "errors" => Some(Node::Errors),
            _ => None,
        }
    }

    /// File or directory.
    pub fn kind(self) -> Kind {
        match self {
            Node::Dir => Kind::Dir,
            Node::Status | Node::Errors => Kind::File,
        }
    }

    /// The directory's entries (empty for files).
    pub fn children(self) -> BTreeMap<String, Kind> {
        match self {
            Node::Dir => [("errors", Kind::File), ("status", Kind::File)]
                .into_iter()
                .map(|(n, k)| (n.to_owned(), k))
                .collect(),
            Node::Status | Node::Errors => BTreeMap::new(),
        }
    }
}

impl Fs {
    /// The current content of a control file.
    pub(super) fn control_content(&self, node: Node) -> Vec<u8> {
        match node {
            Node::Dir => Vec::new(),
            Node::Status => {
                let mut text = serde_json::to_string_pretty(&self.backend.status())
                    .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
                text.push('\n');
                text.into_bytes()
            }
            Node::Errors => self.rejections.render(),
        }
    }

    pub(super) fn control_stat(&self, ino: Ino, node: Node) -> Stat {
        let (perm, nlink, size) = match node {
            Node::Dir => (0o555, 2, 0),
            Node::Status | Node::Errors => (0o444, 1, self.control_content(node).len() as u64),
        };
        Stat {
            ino,
            kind: node.kind(),
            size,
            mtime: SystemTime::now(),
            perm,
            nlink,
            volatile: true,
        }
    }
}
