//! The file watcher: [`Live::watch`] reloads the live snapshot when its
//! input files change.
//!
//! A thread of its own owns a
//! `notify` watcher on the input paths (policies, schema, entities, and the
//! forward-auth routes when configured): directories recursively; the parent
//! of each path, so that a rename over it is seen; the parent of every
//! symlink on the way, so that a git-sync style swap is seen; the nearest
//! existing ancestor of a path that is gone. It drops the events of files
//! that are not inputs (editor swap files, `4913`, `*~`, the reloader's own
//! reads), waits until the changes have been quiet for the debounce time,
//! re-establishes its watches (a path that came back, or now resolves
//! elsewhere, is watched again) and reloads. Events that arrive during a
//! load make one more reload after it.

use std::ffi::OsStr;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::time::{Duration, Instant};

use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RemoveKind};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};

use crate::load::{self, Paths};
use crate::snapshot::FileKind;

use super::{Live, WatchConfig};

impl Live {
    /// Watch the input paths and reload whenever the files change, on a
    /// thread of its own, until the returned [`Watch`] is dropped. Fails only
    /// when no watcher can be created at all (e.g. no inotify instance left):
    /// the caller then serves on, reloading on demand.
    pub fn watch(self: &Arc<Self>, config: WatchConfig) -> notify::Result<Watch> {
        let roots = roots(&self.paths);
        let (tx, rx) = mpsc::channel();
        let watcher = establish(&roots, &tx)?;
        let live = self.clone();
        let own_tx = tx.clone();
        std::thread::Builder::new()
            .name("orgwarden-reload".into())
            .spawn(move || watch_loop(&live, &roots, config, watcher, &rx, &own_tx))
            .map_err(notify::Error::io)?;
        self.watching.store(Arc::new(Some(config)));
        tracing::info!(
            debounce_ms = config.debounce.as_millis() as u64,
            "watching {}, {} and {} for changes",
            self.paths.policies.display(),
            self.paths.schema.display(),
            self.paths.entities.display()
        );
        Ok(Watch {
            tx,
            live: Arc::downgrade(self),
        })
    }
}

/// The file watcher of [`Live::watch`]; it stops when this is dropped
/// (after the reload in progress, if any).
pub struct Watch {
    tx: Sender<Msg>,
    live: std::sync::Weak<Live>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.tx.send(Msg::Stop);
        if let Some(live) = self.live.upgrade() {
            live.watching.store(Arc::new(None));
        }
    }
}

enum Msg {
    /// A watcher's event, with the time it arrived.
    Event(Instant, notify::Result<notify::Event>),
    Stop,
}

/// An input path (absolute, symlinks not resolved) and what it holds.
#[derive(Debug, Clone)]
struct Root {
    path: PathBuf,
    kind: FileKind,
}

fn roots(paths: &Paths) -> Vec<Root> {
    [
        (Some(&paths.policies), FileKind::Policies),
        (Some(&paths.schema), FileKind::Schema),
        (Some(&paths.entities), FileKind::Entities),
        (paths.routes.as_ref(), FileKind::Routes),
        (paths.identity.as_ref(), FileKind::Identity),
    ]
    .into_iter()
    .filter_map(|(p, kind)| Some((p?, kind)))
    .map(|(p, kind)| Root {
        path: std::path::absolute(p).unwrap_or_else(|_| p.clone()),
        kind,
    })
    .collect()
}

fn watch_loop(
    live: &Live,
    roots: &[Root],
    config: WatchConfig,
    mut watcher: RecommendedWatcher,
    rx: &Receiver<Msg>,
    tx: &Sender<Msg>,
) {
    let max_delay = (config.debounce * 10).max(Duration::from_secs(1));
    // Catch up with changes made between the first load and the watches,
    // as if a change had just been seen.
    let mut pending = Some(Instant::now());
    loop {
        let first = match pending.take() {
            Some(at) => at,
            None => match next_relevant(rx, roots, None) {
                Next::Event(at) => at,
                Next::Quiet => continue,
                Next::Stop => return,
            },
        };
        let mut events = 1usize;
        let mut last = first;
        loop {
            let deadline = (last + config.debounce).min(first + max_delay);
            match next_relevant(rx, roots, Some(deadline)) {
                Next::Event(at) => {
                    events += 1;
                    last = last.max(at);
                    if Instant::now() >= first + max_delay {
                        break;
                    }
                }
                Next::Quiet => break,
                Next::Stop => return,
            }
        }
        tracing::debug!(events, "input files changed: reloading");
        let cycle = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            // Watch anew before reading, so that no change after the read is missed.
            match establish(roots, tx) {
                Ok(fresh) => watcher = fresh,
                Err(e) => tracing::warn!("cannot re-establish the file watches: {e}"),
            }
            let _ = live.reload();
        }));
        if cycle.is_err() {
            tracing::error!("internal error in the reload watcher; watching on");
        }
    }
}

/// What came of waiting for an event.
enum Next {
    /// A relevant event, and the time it arrived.
    Event(Instant),
    /// Nothing relevant until the deadline.
    Quiet,
    Stop,
}

/// Wait for the next relevant event until `deadline` (forever when `None`;
/// a deadline already past still drains the events already queued).
fn next_relevant(rx: &Receiver<Msg>, roots: &[Root], deadline: Option<Instant>) -> Next {
    loop {
        let msg = match deadline {
            None => match rx.recv() {
                Ok(msg) => msg,
                Err(_) => return Next::Stop,
            },
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                let got = if left.is_zero() {
                    rx.try_recv().map_err(|e| match e {
                        TryRecvError::Empty => RecvTimeoutError::Timeout,
                        TryRecvError::Disconnected => RecvTimeoutError::Disconnected,
                    })
                } else {
                    rx.recv_timeout(left)
                };
                match got {
                    Ok(msg) => msg,
                    Err(RecvTimeoutError::Timeout) => return Next::Quiet,
                    Err(RecvTimeoutError::Disconnected) => return Next::Stop,
                }
            }
        };
        match msg {
            Msg::Stop => return Next::Stop,
            Msg::Event(at, Ok(event)) => {
                if relevant(&event, roots) {
                    tracing::trace!(?event, "relevant file event");
                    return Next::Event(at);
                }
            }
            Msg::Event(at, Err(e)) => {
                // Events may have been lost: reload and watch anew.
                tracing::warn!("file watcher error: {e}");
                return Next::Event(at);
            }
        }
    }
}

/// A watcher with every watch `roots` need. Watching is re-checked after
/// the watches are in place, so a path that appeared meanwhile is watched.
fn establish(roots: &[Root], tx: &Sender<Msg>) -> notify::Result<RecommendedWatcher> {
    let mut targets = watch_targets(roots);
    for _ in 0..3 {
        let events = tx.clone();
        let mut watcher = RecommendedWatcher::new(
            move |event| {
                let _ = events.send(Msg::Event(Instant::now(), event));
            },
            notify::Config::default(),
        )?;
        for (path, mode) in &targets {
            if let Err(e) = watcher.watch(path, *mode) {
                // Gone since we looked: its nearest existing ancestor will
                // see it come back.
                tracing::debug!("cannot watch {}: {e}", path.display());
                if let Some(ancestor) = nearest_existing_ancestor(path) {
                    let _ = watcher.watch(&ancestor, RecursiveMode::NonRecursive);
                }
            }
        }
        let now = watch_targets(roots);
        if now == targets {
            return Ok(watcher);
        }
        targets = now;
    }
    // Still changing: the next events will make us watch anew.
    let events = tx.clone();
    let mut watcher = RecommendedWatcher::new(
        move |event| {
            let _ = events.send(Msg::Event(Instant::now(), event));
        },
        notify::Config::default(),
    )?;
    for (path, mode) in &targets {
        let _ = watcher.watch(path, *mode);
    }
    Ok(watcher)
}

/// What to watch for `roots`: each existing directory recursively; the
/// parent of each path (renames over it, its deletion and return); the
/// parent of every symlink on its way (a swap of the link); the nearest
/// existing ancestor of a path that does not exist.
fn watch_targets(roots: &[Root]) -> Vec<(PathBuf, RecursiveMode)> {
    let mut recursive: Vec<PathBuf> = Vec::new();
    let mut flat: Vec<PathBuf> = Vec::new();
    for root in roots {
        let path = &root.path;
        match std::fs::metadata(path) {
            Ok(m) if m.is_dir() => recursive.push(path.clone()),
            Ok(_) => {}
            Err(_) => flat.extend(nearest_existing_ancestor(path)),
        }
        for ancestor in path.ancestors() {
            let is_link = std::fs::symlink_metadata(ancestor).is_ok_and(|m| m.is_symlink());
            if (ancestor == path.as_path() || is_link)
                && let Some(parent) = ancestor.parent()
                && parent.is_dir()
            {
                flat.push(parent.to_path_buf());
            }
        }
    }
    recursive.sort();
    recursive.dedup();
    let outer: Vec<PathBuf> = recursive
        .iter()
        .filter(|p| !recursive.iter().any(|q| q != *p && p.starts_with(q)))
        .cloned()
        .collect();
    flat.sort();
    flat.dedup();
    flat.retain(|p| !outer.iter().any(|q| p.starts_with(q)));
    outer
        .into_iter()
        .map(|p| (p, RecursiveMode::Recursive))
        .chain(flat.into_iter().map(|p| (p, RecursiveMode::NonRecursive)))
        .collect()
}

fn nearest_existing_ancestor(path: &Path) -> Option<PathBuf> {
    path.ancestors()
        .skip(1)
        .find(|a| a.is_dir())
        .map(Path::to_path_buf)
}

/// Can `event` change what a load reads?
fn relevant(event: &notify::Event, roots: &[Root]) -> bool {
    match event.kind {
        // The reloader's own reads, and any other reader's.
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => {}
        EventKind::Access(_) => return false,
        _ => {}
    }
    if event.need_rescan() || event.paths.is_empty() {
        return true;
    }
    event
        .paths
        .iter()
        .any(|p| path_relevant(p, &event.kind, roots))
}

fn path_relevant(path: &Path, kind: &EventKind, roots: &[Root]) -> bool {
    // An input path itself, or a directory on its way (renamed, deleted,
    // created, a symlink swapped).
    if roots.iter().any(|r| r.path.starts_with(path)) {
        return true;
    }
    for root in roots {
        let Ok(rel) = path.strip_prefix(&root.path) else {
            continue;
        };
        let mut parts: Vec<Component> = rel.components().collect();
        if parts.pop().is_none() {
            continue;
        }
        // Inside a hidden directory (a ConfigMap's `..2026_…` data, `.git`):
        // loads skip those; the swap of the visible link is what counts.
        if parts.iter().any(|c| is_hidden(c.as_os_str())) {
            continue;
        }
        if leaf_relevant(path, root.kind, kind) {
            return true;
        }
    }
    // A ConfigMap's `..data` link swapped beside an input path that is a file.
    roots.iter().any(|r| {
        path.parent().is_some_and(|p| Some(p) == r.path.parent())
            && path.file_name().is_some_and(is_hidden)
            && is_link_to_dir(path)
    })
}

/// Is a changed entry below an input directory worth a reload?
fn leaf_relevant(path: &Path, file_kind: FileKind, event: &EventKind) -> bool {
    let name = path.file_name().unwrap_or_default();
    if is_hidden(name) {
        // Loads skip hidden entries; only a link others may point through
        // (a ConfigMap's `..data`) matters. Not an editor's swap file or lock.
        return is_link_to_dir(path);
    }
    if load::has_extension(path, file_kind) {
        return true;
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => true,
        Ok(m) if m.is_symlink() => is_link_to_dir(path),
        // A file that is not an input (`4913`, `x.cedar~`, notes).
        Ok(_) => false,
        Err(_) => match event {
            EventKind::Create(CreateKind::Folder) | EventKind::Remove(RemoveKind::Folder) => true,
            // Gone, kind unknown (renamed away): maybe a directory, unless
            // it looks like an editor's temporary file.
            EventKind::Modify(ModifyKind::Name(_))
            | EventKind::Remove(RemoveKind::Any | RemoveKind::Other)
            | EventKind::Any
            | EventKind::Other => !looks_temporary(name),
            // A file written or removed: not an input, by its name.
            _ => false,
        },
    }
}

fn is_hidden(name: &OsStr) -> bool {
    name.as_encoded_bytes().first() == Some(&b'.')
}

fn is_link_to_dir(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.is_symlink())
        && std::fs::metadata(path).is_ok_and(|m| m.is_dir())
}

/// Names editors give their temporary and backup files.
fn looks_temporary(name: &OsStr) -> bool {
    let name = name.to_string_lossy();
    name.ends_with('~')
        || name.starts_with('#')
        || name.bytes().all(|b| b.is_ascii_digit())
        || [".swp", ".swx", ".swo", ".tmp", ".bak", ".orig"]
            .iter()
            .any(|ext| name.ends_with(ext))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use notify::event::{DataChange, RenameMode};

    use super::*;

    fn event(kind: EventKind, path: &Path) -> notify::Event {
        notify::Event::new(kind).add_path(path.to_path_buf())
    }

    const WRITE: EventKind = EventKind::Modify(ModifyKind::Data(DataChange::Any));
    const CREATE_FILE: EventKind = EventKind::Create(CreateKind::File);
    const REMOVE_FILE: EventKind = EventKind::Remove(RemoveKind::File);
    const RENAMED_AWAY: EventKind = EventKind::Modify(ModifyKind::Name(RenameMode::From));

    /// `base/policies/` (a directory), `base/schema.cedarschema` (a file),
    /// `base/cm/` (a ConfigMap-style entities directory).
    fn layout() -> (tempfile::TempDir, Vec<Root>) {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path();
        std::fs::create_dir_all(base.join("policies/team")).unwrap();
        std::fs::write(base.join("policies/a.cedar"), "").unwrap();
        std::fs::write(base.join("schema.cedarschema"), "").unwrap();
        std::fs::create_dir_all(base.join("cm/..2026_01")).unwrap();
        std::fs::write(base.join("cm/..2026_01/e.json"), "[]").unwrap();
        symlink("..2026_01", base.join("cm/..data")).unwrap();
        symlink("..data/e.json", base.join("cm/e.json")).unwrap();
        let paths = Paths {
            policies: base.join("policies"),
            schema: base.join("schema.cedarschema"),
            entities: base.join("cm"),
            ..Paths::default()
        };
        (dir, roots(&paths))
    }

    #[test]
    fn input_files_and_directories_are_relevant() {
        let (dir, roots) = layout();
        let b = dir.path();
        for (kind, path) in [
            (WRITE, b.join("policies/a.cedar")),
            (CREATE_FILE, b.join("policies/new.cedar")),
            (REMOVE_FILE, b.join("policies/gone.cedar")),
            (RENAMED_AWAY, b.join("policies/a.cedar")),
            (
                EventKind::Create(CreateKind::Folder),
                b.join("policies/team"),
            ),
            (RENAMED_AWAY, b.join("policies/old-team")),
            (
                EventKind::Access(AccessKind::Close(AccessMode::Write)),
                b.join("policies/team/t.cedar"),
            ),
            // The schema file itself, renamed over, seen from its parent.
            (
                EventKind::Modify(ModifyKind::Name(RenameMode::To)),
                b.join("schema.cedarschema"),
            ),
            // An input directory itself, or its parent, going away.
            (EventKind::Remove(RemoveKind::Folder), b.join("policies")),
            (EventKind::Remove(RemoveKind::Folder), b.to_path_buf()),
            // The ConfigMap's `..data` link swapped.
            (
                EventKind::Modify(ModifyKind::Name(RenameMode::To)),
                b.join("cm/..data"),
            ),
            (WRITE, b.join("cm/e.json")),
        ] {
            assert!(
                relevant(&event(kind, &path), &roots),
                "{kind:?} {}",
                path.display()
            );
        }
        // A rescan notice (lost events) always reloads.
        let rescan = notify::Event::new(EventKind::Other).set_flag(notify::event::Flag::Rescan);
        assert!(relevant(&rescan, &roots));
    }

    #[test]
    fn editor_temporaries_reads_and_hidden_data_are_not() {
        let (dir, roots) = layout();
        let b = dir.path();
        std::fs::write(b.join("policies/4913"), "").unwrap();
        std::fs::write(b.join("policies/notes.txt"), "").unwrap();
        symlink("user@host.1234", b.join("policies/.#a.cedar")).unwrap();
        for (kind, path) in [
            (CREATE_FILE, b.join("policies/4913")),
            (REMOVE_FILE, b.join("policies/4913")),
            (RENAMED_AWAY, b.join("policies/4913")),
            (CREATE_FILE, b.join("policies/a.cedar~")),
            (RENAMED_AWAY, b.join("policies/a.cedar~")),
            (WRITE, b.join("policies/.a.cedar.swp")),
            (RENAMED_AWAY, b.join("policies/a.cedar.tmp")),
            (CREATE_FILE, b.join("policies/.#a.cedar")),
            (WRITE, b.join("policies/notes.txt")),
            // A policy file where entities are expected is not an input.
            (WRITE, b.join("cm/x.cedar")),
            // Reads, the reloader's own included.
            (
                EventKind::Access(AccessKind::Open(AccessMode::Any)),
                b.join("policies/a.cedar"),
            ),
            (
                EventKind::Access(AccessKind::Close(AccessMode::Read)),
                b.join("policies/a.cedar"),
            ),
            // Inside the ConfigMap's hidden data directories.
            (CREATE_FILE, b.join("cm/..2026_02/e.json")),
            (
                EventKind::Remove(RemoveKind::Folder),
                b.join("cm/..2026_00"),
            ),
            (RENAMED_AWAY, b.join("cm/..data_tmp")),
            // Siblings of the inputs that are no input.
            (WRITE, b.join("other.cedarschema")),
            (CREATE_FILE, b.join("README.md")),
        ] {
            assert!(
                !relevant(&event(kind, &path), &roots),
                "{kind:?} {}",
                path.display()
            );
        }
    }

    fn targets(roots: &[Root]) -> Vec<(PathBuf, bool)> {
        watch_targets(roots)
            .into_iter()
            .map(|(p, m)| (p, m == RecursiveMode::Recursive))
            .collect()
    }

    #[test]
    fn watches_directories_parents_symlink_parents_and_ancestors_of_missing_paths() {
        let dir = tempfile::tempdir().unwrap();
        let b = dir.path();
        std::fs::create_dir_all(b.join("git/rev1/policies")).unwrap();
        symlink("rev1", b.join("git/current")).unwrap();
        std::fs::create_dir_all(b.join("etc")).unwrap();
        std::fs::write(b.join("etc/schema.cedarschema"), "").unwrap();
        let paths = Paths {
            policies: b.join("git/current/policies"),
            schema: b.join("etc/schema.cedarschema"),
            entities: b.join("missing/deeper/entities"),
            ..Paths::default()
        };
        let roots = roots(&paths);
        let got = targets(&roots);
        let want = vec![
            (b.join("git/current/policies"), true),
            // The parent of the link `current`: a swap of the link is seen.
            (b.join("git"), false),
            // The parent of the policies directory (through the link).
            (b.join("git/current"), false),
            // The nearest existing ancestor of the missing entities path.
            (b.to_path_buf(), false),
            (b.join("etc"), false),
        ];
        let mut got_sorted = got.clone();
        got_sorted.sort();
        let mut want_sorted = want;
        want_sorted.sort();
        assert_eq!(got_sorted, want_sorted);

        // The missing path appears: it is watched itself from then on.
        std::fs::create_dir_all(b.join("missing/deeper/entities")).unwrap();
        let got = targets(&roots);
        assert!(
            got.contains(&(b.join("missing/deeper/entities"), true)),
            "{got:?}"
        );
        assert!(got.contains(&(b.join("missing/deeper"), false)), "{got:?}");
        assert!(!got.contains(&(b.to_path_buf(), false)), "{got:?}");
    }

    #[test]
    fn nested_inputs_share_one_recursive_watch() {
        let dir = tempfile::tempdir().unwrap();
        let b = dir.path();
        std::fs::create_dir_all(b.join("all/policies")).unwrap();
        std::fs::write(b.join("all/schema.cedarschema"), "").unwrap();
        let paths = Paths {
            policies: b.join("all/policies"),
            schema: b.join("all/schema.cedarschema"),
            entities: b.join("all"),
            ..Paths::default()
        };
        let got = targets(&roots(&paths));
        assert_eq!(got, vec![(b.join("all"), true), (b.to_path_buf(), false)]);
    }

    #[test]
    fn temporary_names() {
        for name in [
            "4913",
            "a.cedar~",
            "#a.cedar#",
            ".a.swp",
            "a.cedar.tmp",
            "x.bak",
        ] {
            assert!(looks_temporary(OsStr::new(name)), "{name}");
        }
        for name in ["team", "a.cedar", "policies-v2"] {
            assert!(!looks_temporary(OsStr::new(name)), "{name}");
        }
    }
}
