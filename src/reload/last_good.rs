//! The last good inputs on disk (`--last-good-dir`): a copy of the files of
//! every snapshot that loaded, so that a restart whose files are broken can
//! serve what was served before.
//!
//! Layout: `DIR/current` is a symbolic link to `DIR/set-<n>`, a directory
//! holding `policies/`, `schema/`, `entities/` and (when there are routes)
//! `routes/`, each file at its path relative to the configured path (a path
//! that is a single file keeps its name). A new set is written in full
//! under a temporary name, then `current` is swapped by renaming a new link
//! over it (atomic on POSIX file systems), then older sets are removed: a
//! crash at any point leaves `current` naming a complete set. A file that
//! changed on disk since its snapshot loaded (its SHA-256 differs) is not
//! copied; that set is skipped, and the next good reload writes one.

use std::io;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::load::Paths;
use crate::snapshot::{FileKind, Snapshot};

const CURRENT: &str = "current";

fn sub(kind: FileKind) -> &'static str {
    match kind {
        FileKind::Policies => "policies",
        FileKind::Schema => "schema",
        FileKind::Entities => "entities",
        FileKind::Routes => "routes",
        FileKind::Identity => "identity",
    }
}

/// The paths of the saved set in `dir`, when there is one.
pub fn saved(dir: &Path) -> Option<Paths> {
    let set = std::fs::canonicalize(dir.join(CURRENT)).ok()?;
    let routes = set.join("routes");
    let identity = set.join("identity");
    Some(Paths {
        policies: set.join("policies"),
        schema: set.join("schema"),
        entities: set.join("entities"),
        routes: routes.is_dir().then_some(routes),
        identity: identity.is_dir().then_some(identity),
    })
}

/// Where `file` (of `kind`) goes in a set: its path under the configured
/// path of its kind.
fn relative(paths: &Paths, kind: FileKind, file: &Path) -> PathBuf {
    let root = match kind {
        FileKind::Policies => Some(&paths.policies),
        FileKind::Schema => Some(&paths.schema),
        FileKind::Entities => Some(&paths.entities),
        FileKind::Routes => paths.routes.as_ref(),
        FileKind::Identity => paths.identity.as_ref(),
    };
    let name = || PathBuf::from(file.file_name().unwrap_or(file.as_os_str()));
    match root.and_then(|r| file.strip_prefix(r).ok()) {
        Some(rel) if !rel.as_os_str().is_empty() => rel.to_path_buf(),
        _ => name(),
    }
}

/// Save the inputs of `snap` (loaded from `paths`) as the current set in
/// `dir`. `Ok(false)`: a file changed since it loaded, nothing saved.
pub fn save(dir: &Path, paths: &Paths, snap: &Snapshot) -> io::Result<bool> {
    std::fs::create_dir_all(dir)?;
    let name = format!(
        "set-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default()
    );
    let staging = dir.join(format!(".{name}.tmp"));
    let _ = std::fs::remove_dir_all(&staging);
    let written = (|| -> io::Result<bool> {
        for kind in [FileKind::Policies, FileKind::Schema, FileKind::Entities] {
            std::fs::create_dir_all(staging.join(sub(kind)))?;
        }
        for file in &snap.files {
            let bytes = std::fs::read(&file.path)?;
            if hex::encode(Sha256::digest(&bytes)) != file.sha256 {
                return Ok(false);
            }
            let to = staging
                .join(sub(file.kind))
                .join(relative(paths, file.kind, &file.path));
            if let Some(parent) = to.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(&to, &bytes)?;
            std::fs::File::open(&to)?.sync_all()?;
        }
        Ok(true)
    })();
    match written {
        Ok(true) => {}
        other => {
            let _ = std::fs::remove_dir_all(&staging);
            return other;
        }
    }
    let set = dir.join(&name);
    std::fs::rename(&staging, &set)?;
    let link = dir.join(format!(".{name}.link"));
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&name, &link)?;
    std::fs::rename(&link, dir.join(CURRENT))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    // Older sets and leftovers of interrupted saves.
    for entry in std::fs::read_dir(dir)?.flatten() {
        let file_name = entry.file_name();
        let n = file_name.to_string_lossy();
        let stale_set = n.starts_with("set-") && n != name.as_str();
        let leftover = n.starts_with(".set-");
        if stale_set || leftover {
            let p = entry.path();
            let _ = std::fs::remove_dir_all(&p).or_else(|_| std::fs::remove_file(&p));
        }
    }
    Ok(true)
}
