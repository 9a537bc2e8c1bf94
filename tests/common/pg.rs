//! A private PostgreSQL cluster for the tests that need one: `initdb` and
//! `pg_ctl` in a temporary directory, on a free loopback port. Missing
//! server binaries skip the test, except under CI (env `CI` set), where
//! they fail it.

#![allow(dead_code)]

use std::process::{Command, Stdio};

/// A PostgreSQL cluster of our own (`initdb` and `pg_ctl` as the
/// `postgres` user when run as root), on a free loopback port, stopped
/// and removed when dropped.
pub struct PgCluster {
    dir: tempfile::TempDir,
    bin: std::path::PathBuf,
    pub port: u16,
}

/// The server binaries: `ORGWARDEN_PG_BIN`, else the newest of Debian's
/// `/usr/lib/postgresql/*/bin` (15 or newer).
fn pg_bin() -> Option<std::path::PathBuf> {
    if let Some(dir) = std::env::var_os("ORGWARDEN_PG_BIN") {
        return Some(dir.into());
    }
    let mut found: Vec<(u32, std::path::PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let version: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            (version >= 15 && bin.join("initdb").exists()).then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, b)| b)
}

fn as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

impl PgCluster {
    fn run(&self, program: &str, args: &[&str]) -> std::process::Output {
        let exe = self.bin.join(program);
        let mut cmd = if as_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        };
        cmd.args(args).stdin(Stdio::null()).output().unwrap()
    }

    pub fn start() -> Option<PgCluster> {
        let Some(bin) = pg_bin() else {
            if std::env::var_os("CI").is_some() {
                panic!(
                    "PostgreSQL 15+ server binaries are not installed, and CI is set \
                     (scripts/test installs them; or set ORGWARDEN_PG_BIN)"
                );
            }
            eprintln!(
                "SKIPPED: PostgreSQL 15+ server binaries are not installed; run scripts/test \
                 (which installs them) or set ORGWARDEN_PG_BIN. Under CI this test fails instead."
            );
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        if as_root() {
            let chown = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(chown.success());
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let cluster = PgCluster { dir, bin, port };
        let data = cluster.dir.path().join("data");
        let init = cluster.run(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        assert!(
            init.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&init.stderr)
        );
        cluster.start_server();
        Some(cluster)
    }

    /// `pg_ctl start` (waits until it accepts connections).
    pub fn start_server(&self) {
        let data = self.dir.path().join("data");
        let port = self.port;
        let cluster = self;
        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1",
            cluster.dir.path().display()
        );
        let log = cluster.dir.path().join("log");
        let start = cluster.run(
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-o",
                &options,
                "-l",
                log.to_str().unwrap(),
                "-w",
                "start",
            ],
        );
        assert!(
            start.status.success(),
            "pg_ctl start: {} {}",
            String::from_utf8_lossy(&start.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// `pg_ctl stop -m fast` (waits until it is down): sessions are cut,
    /// transactions in flight roll back.
    pub fn stop_server(&self) {
        let data = self.dir.path().join("data");
        let stop = self.run(
            "pg_ctl",
            &["-D", data.to_str().unwrap(), "-m", "fast", "-w", "stop"],
        );
        assert!(
            stop.status.success(),
            "pg_ctl stop: {}",
            String::from_utf8_lossy(&stop.stderr)
        );
    }

    /// A new, empty database's URL.
    pub async fn database(&self, name: &str) -> String {
        let admin = format!("postgres://postgres@127.0.0.1:{}/postgres", self.port);
        sqlx::any::install_default_drivers();
        let pool = sqlx::AnyPool::connect(&admin).await.unwrap();
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        self.run(
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        );
    }
}
