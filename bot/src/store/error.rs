//! Store errors.

/// What went wrong talking to the state store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database returned an error or is unreachable.
    #[error("state store error: {0} (check the [store] url and that the database is reachable)")]
    Database(#[from] sqlx::Error),
    /// Migrations failed.
    #[error(
        "state store migration failed: {0} (the database may be from a newer Countersign version)"
    )]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// Stored data could not be decoded.
    #[error("state store holds data this version cannot read: {0}")]
    Corrupt(String),
    /// Bad store configuration.
    #[error("{0}")]
    Config(String),
    /// No such request.
    #[error("no request {0}: list requests with `countersign requests list`")]
    NotFound(String),
    /// A request for the same statement by the same requester on the same connection is already
    /// pending or approved (created concurrently): use that one.
    #[error("request {0} already holds this statement for this requester; use it")]
    AlreadyHeld(String),
}

impl From<serde_json::Error> for StoreError {
    fn from(e: serde_json::Error) -> Self {
        StoreError::Corrupt(e.to_string())
    }
}
