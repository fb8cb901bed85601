//! Test support: fresh stores of both backends and sample identities. Public so the gateway's and the
//! end-to-end tests can use the same helpers.

use crate::identity::{Identity, IdentityKind};
use crate::store::{self, Store, StoreError};
use std::sync::Arc;

/// Admin URL of the local PostgreSQL used by tests (override with `COUNTERSIGN_TEST_PG`).
pub fn pg_admin_url() -> String {
    std::env::var("COUNTERSIGN_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// Create a fresh, uniquely named PostgreSQL database and return its URL.
pub async fn fresh_pg_database() -> Result<String, StoreError> {
    use sqlx::Connection;
    let admin = pg_admin_url();
    let name = format!("cs_test_{}", uuid::Uuid::new_v4().simple());
    let mut conn = sqlx::PgConnection::connect(&admin).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await?;
    let base = admin
        .rsplit_once('/')
        .map(|(b, _)| b.to_string())
        .unwrap_or(admin);
    Ok(format!("{base}/{name}"))
}

/// A fresh SQLite store in a temporary directory (kept alive by the returned guard).
pub async fn fresh_sqlite() -> (Arc<dyn Store>, TempDir) {
    let dir = TempDir::new();
    let url = format!("sqlite://{}/state.db", dir.path().display());
    (store::open(&url).await.expect("open sqlite store"), dir)
}

/// A fresh PostgreSQL store in its own database.
pub async fn fresh_pg() -> Arc<dyn Store> {
    let url = fresh_pg_database()
        .await
        .expect("create test database (is PostgreSQL running on 127.0.0.1:5432?)");
    store::open(&url).await.expect("open postgres store")
}

/// A directory removed on drop.
pub struct TempDir(std::path::PathBuf);

impl TempDir {
    /// Create one under the system temp dir.
    pub fn new() -> Self {
        let p = std::env::temp_dir().join(format!(
            "countersign-test-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&p).expect("create temp dir");
        Self(p)
    }

    /// Its path.
    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Default for TempDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A human with an e-mail address.
pub fn human(email: &str) -> Identity {
    Identity {
        issuer: "static".into(),
        subject: email.split('@').next().unwrap_or(email).into(),
        email: Some(email.into()),
        unverified_email: None,
        kind: IdentityKind::Human,
        groups: vec![],
    }
}

/// A workload identity.
pub fn workload(name: &str) -> Identity {
    Identity {
        issuer: "static".into(),
        subject: name.into(),
        email: None,
        unverified_email: None,
        kind: IdentityKind::Workload,
        groups: vec![],
    }
}
