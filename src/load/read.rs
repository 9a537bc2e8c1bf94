//! Reading: the files of a path (a file or a directory read recursively),
//! by kind, into memory, with their digests.

use std::path::{Path, PathBuf};

use crate::diag::{Diagnostic, Diagnostics};
use crate::snapshot::{FileKind, SourceFile};
use crate::source::TextFile;
use sha2::{Digest, Sha256};

pub(super) fn source_file(f: &TextFile, kind: FileKind) -> SourceFile {
    SourceFile {
        path: f.path.clone(),
        kind,
        sha256: sha256(&f.text),
        bytes: f.text.len() as u64,
    }
}

/// Does `path` hold a file of `kind`, by its name?
pub fn has_extension(path: &Path, kind: FileKind) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if name.starts_with('.') {
        return false;
    }
    match kind {
        FileKind::Policies => name.ends_with(".cedar"),
        FileKind::Schema => name.ends_with(".cedarschema") || name.ends_with(".cedarschema.json"),
        FileKind::Entities => name.ends_with(".json"),
        FileKind::Routes | FileKind::Identity => name.ends_with(".yaml") || name.ends_with(".yml"),
    }
}

/// The files of `kind` at `root`: the file itself, or every matching file
/// below the directory (hidden entries skipped, symlinks followed), sorted.
pub fn list_files(root: &Path, kind: FileKind) -> std::io::Result<Vec<PathBuf>> {
    let meta = std::fs::metadata(root)?;
    if meta.is_file() {
        return Ok(vec![root.to_path_buf()]);
    }
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            let hidden = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.'));
            if hidden {
                continue;
            }
            match std::fs::metadata(&path) {
                Ok(m) if m.is_dir() => stack.push(path),
                Ok(m) if m.is_file() && has_extension(&path, kind) => out.push(path),
                _ => {}
            }
        }
    }
    out.sort();
    Ok(out)
}

pub(super) fn read_files(root: &Path, kind: FileKind, diags: &mut Diagnostics) -> Vec<TextFile> {
    let paths = match list_files(root, kind) {
        Ok(p) => p,
        Err(e) => {
            diags.push(Diagnostic::plain(
                Some(root),
                None,
                format!("cannot read {kind:?} path: {e}").to_lowercase(),
            ));
            return Vec::new();
        }
    };
    if paths.is_empty() && kind == FileKind::Schema {
        diags.push(Diagnostic::plain(
            Some(root),
            None,
            "no schema file (*.cedarschema or *.cedarschema.json) found",
        ));
    }
    let mut files = Vec::new();
    for path in paths {
        match std::fs::read_to_string(&path) {
            Ok(text) => files.push(TextFile { path, text }),
            Err(e) => diags.push(Diagnostic::plain(
                Some(&path),
                None,
                format!("cannot read file: {e}"),
            )),
        }
    }
    files
}

/// Cedar's JSON entities of a snapshot, as one array (for tools and tests).
pub fn entities_json(files: &[TextFile]) -> serde_json::Value {
    let mut out = Vec::new();
    for f in files {
        if let Ok(serde_json::Value::Array(items)) = serde_json::from_str(&f.text) {
            out.extend(items);
        }
    }
    serde_json::Value::Array(out)
}

/// Read the files of `root` (for tools that need the raw texts).
pub fn read_texts(root: &Path, kind: FileKind) -> Result<Vec<TextFile>, Diagnostics> {
    let mut diags = Diagnostics::default();
    let files = read_files(root, kind, &mut diags);
    if diags.has_errors() {
        Err(diags)
    } else {
        Ok(files)
    }
}

pub(super) fn json_syntax(path: &Path, e: &serde_json::Error) -> Diagnostic {
    Diagnostic::plain(
        Some(path),
        Some((e.line(), e.column())),
        format!("invalid JSON: {e}"),
    )
}

pub(super) fn sha256(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}
