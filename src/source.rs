//! Source files and positions: a file read into memory, and where an
//! entity is defined in a JSON file. The bottom layer: it knows no model,
//! no snapshot and no format beyond text and JSON.

use std::path::PathBuf;

use cedar_policy::EntityUid;

use crate::diag::line_col;

/// A file read into memory.
#[derive(Debug, Clone)]
pub struct TextFile {
    pub path: PathBuf,
    pub text: String,
}

/// Best-effort position of an entity's definition in a JSON file.
pub fn locate_entity(text: &str, uid: &EntityUid) -> Option<(usize, usize)> {
    locate_raw(
        text,
        &(
            uid.type_name().to_string(),
            uid.id().unescaped().to_string(),
        ),
    )
}

pub(crate) fn locate_raw(text: &str, (ty, id): &(String, String)) -> Option<(usize, usize)> {
    let id = serde_json::to_string(id).ok()?;
    let ty = serde_json::to_string(ty).ok()?;
    let mut from = 0;
    while let Some(at) = text[from..].find(&id) {
        let pos = from + at;
        let window_start = pos.saturating_sub(200);
        let window_end = (pos + 200).min(text.len());
        let window = text.get(window_start..window_end).unwrap_or("");
        if window.contains(&ty) {
            // Point at the start of the object holding the uid.
            let obj = text[..pos].rfind("\"uid\"").unwrap_or(pos);
            return Some(line_col(text, obj));
        }
        from = pos + id.len();
    }
    None
}
