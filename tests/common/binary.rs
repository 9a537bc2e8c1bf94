//! The real `orgwarden` binary on a loopback port, and directory copies:
//! shared by the integration tests (through `common`) and the reload
//! benchmark (by path), so that both start the server the same way.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// `orgwarden serve` on a free loopback port with the decision log off,
/// `flags` first, then the model's three paths. The environment's
/// `ORGWARDEN_*` reload settings are cleared so that `flags` decide.
pub fn serve_command(policies: &Path, schema: &Path, entities: &Path, flags: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_orgwarden"));
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--decision-log", "off"])
        .args(flags)
        .arg("--policies")
        .arg(policies)
        .arg("--schema")
        .arg(schema)
        .arg("--entities")
        .arg(entities)
        .env_remove("ORGWARDEN_NO_WATCH")
        .env_remove("ORGWARDEN_RELOAD_DEBOUNCE_MS");
    command
}

/// Spawn `command` (an `orgwarden serve`) and wait up to `patience` for it
/// to listen: the child and its address (`127.0.0.1:port`). Its log is
/// read to the end on a thread, so that the server never blocks on a full
/// pipe; lines with `ERROR` are repeated on this process's stderr.
pub fn spawn_serve(mut command: Command, patience: Duration) -> (Child, String) {
    let mut child = command
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    let stderr = child.stderr.take().expect("stderr is piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(at) = line.find("listening on http://") {
                let addr = line[at + "listening on http://".len()..]
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_string();
                let _ = tx.send(addr);
            }
            if line.contains("ERROR") {
                eprintln!("server: {line}");
            }
        }
    });
    match rx.recv_timeout(patience) {
        Ok(addr) => (child, addr),
        Err(_) => {
            let _ = child.kill();
            let status = child.wait();
            panic!("the server did not start ({status:?})");
        }
    }
}

/// Copy the directory tree `from` to `to`.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// `orgwarden facts import` of the entities of `model` (a directory with
/// `entities/`, `policies/` and `schema/`) into the store at `url`,
/// validated against its policies and schema. Panics with the command's
/// stderr when the import fails.
pub fn import_facts(model: &Path, url: &str) {
    import_entities(&model.join("entities"), model, url);
}

/// `orgwarden facts import` of `entities` into the store at `url`,
/// validated against the policies and schema of `model`. Panics with the
/// command's stderr when the import fails.
pub fn import_entities(entities: &Path, model: &Path, url: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_orgwarden"))
        .args(["facts", "import"])
        .arg(entities)
        .args(["--into", url, "--policies"])
        .arg(model.join("policies"))
        .arg("--schema")
        .arg(model.join("schema"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
