//! A private PostgreSQL 15 for tests that need what the shared server at 127.0.0.1:5432 lacks (SCRAM on
//! hostssl lines, a server certificate the test chooses). PostgreSQL refuses to run as root, so `initdb`
//! and `pg_ctl` run as the `postgres` user (`runuser`) in a temporary directory it owns, listening on a
//! free loopback port and a socket in that directory. Dropping the value stops it and removes the directory.

use super::pki::CertFiles;
use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = "/usr/lib/postgresql/15/bin";

/// A running private instance; superuser `postgres` with [`PrivatePostgres::password`].
pub struct PrivatePostgres {
    pub port: u16,
    pub password: String,
    dir: PathBuf,
}

fn run(what: &str, command: &mut Command) {
    let out = command.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(out.status.success(), "{what} failed: {out:?}");
}

fn as_postgres(program: &str) -> Command {
    let mut c = Command::new("runuser");
    c.args(["-u", "postgres", "--", &format!("{BIN}/{program}")]);
    c
}

impl PrivatePostgres {
    /// Creates and starts an instance with TLS from `cert` and these `pg_hba.conf` lines (local socket
    /// connections are trusted). Blocking: call it from `spawn_blocking` in async tests.
    pub fn start(cert: &CertFiles, hba: &[&str]) -> Self {
        let dir = std::env::temp_dir().join(format!("cs_pg_{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        // Set up the value first so that Drop cleans up whatever a failed step leaves.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let pg = Self {
            port,
            password: format!("pw-{}", uuid::Uuid::new_v4().simple()),
            dir,
        };
        let path = |name: &str| pg.dir.join(name);
        std::fs::write(path("pwfile"), &pg.password).unwrap();
        std::fs::copy(&cert.cert, path("server.crt")).unwrap();
        std::fs::copy(&cert.key, path("server.key")).unwrap();
        run(
            "chown",
            Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&pg.dir),
        );
        run(
            "chmod",
            Command::new("chmod").arg("600").arg(path("server.key")),
        );
        run(
            "initdb",
            as_postgres("initdb")
                .args(["--no-sync", "-U", "postgres", "--auth=trust", "-E", "UTF8"])
                .arg(format!("--pwfile={}", path("pwfile").display()))
                .arg("-D")
                .arg(path("data")),
        );
        let conf = format!(
            "\nport = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{dir}'\n\
             ssl = on\nssl_cert_file = '{dir}/server.crt'\nssl_key_file = '{dir}/server.key'\n\
             fsync = off\nmax_connections = 20\nshared_buffers = 16MB\n",
            dir = pg.dir.display()
        );
        append(&path("data/postgresql.conf"), &conf);
        let hba = format!("local all all trust\n{}\n", hba.join("\n"));
        std::fs::write(path("data/pg_hba.conf"), hba).unwrap();
        run(
            "pg_ctl start",
            as_postgres("pg_ctl")
                .args(["-w", "-t", "60", "-l"])
                .arg(path("log"))
                .arg("-D")
                .arg(path("data"))
                .arg("start"),
        );
        pg
    }

    /// `postgres://postgres:PASSWORD@127.0.0.1:PORT/{database}?{query}`.
    pub fn url(&self, database: &str, query: &str) -> String {
        format!(
            "postgres://postgres:{}@127.0.0.1:{}/{database}?{query}",
            self.password, self.port
        )
    }

    /// The TCP address.
    pub fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The server log so far (for assertion messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }
}

fn append(path: &Path, text: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        if self.dir.join("data/postmaster.pid").exists() {
            let _ = as_postgres("pg_ctl")
                .args(["-w", "-m", "immediate", "-D"])
                .arg(self.dir.join("data"))
                .arg("stop")
                .output();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
