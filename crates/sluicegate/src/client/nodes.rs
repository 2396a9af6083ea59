//! Connections to the nodes of a Citus cluster, for lanes: each opened on first use with the
//! target's URL (its role, password, database and options) and the node's host and port, as
//! Citus's catalog names them, and kept for the handle's life.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use super::mask_password;
use crate::error::{Error, Result};
use crate::store::postgres::PgTarget;
use crate::store::Target;

/// How long a node may take to give a connection: a node that is down is said within
/// seconds, so that its lanes are held while the others go on.
const NODE_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// The nodes' targets, by `host:port`.
pub(crate) struct Nodes {
    /// The target's URL, which the nodes' connections copy.
    url: String,
    max_connections: u32,
    open: tokio::sync::Mutex<HashMap<String, Arc<dyn Target>>>,
}

impl std::fmt::Debug for Nodes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nodes")
            .field("url", &mask_password(&self.url))
            .finish()
    }
}

impl Nodes {
    pub(crate) fn new(url: &str, max_connections: u32) -> Self {
        Self {
            url: url.to_owned(),
            max_connections,
            open: Default::default(),
        }
    }

    /// The target on `node` (`host:port`), connected on first use. Connections are made as
    /// they are needed, so a node that is down fails the statement that needs it (as a lost
    /// connection), not this call.
    pub(crate) async fn target(&self, node: &str) -> Result<Arc<dyn Target>> {
        let mut open = self.open.lock().await;
        if let Some(target) = open.get(node) {
            return Ok(target.clone());
        }
        let (host, port) = node
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
            .ok_or_else(|| Error::Corrupt(format!("bad Citus node {node:?} (want host:port)")))?;
        let options = PgConnectOptions::from_str(&self.url)
            .map_err(|e| Error::InvalidUrl {
                url: mask_password(&self.url),
                reason: e.to_string(),
            })?
            .host(host)
            .port(port)
            .application_name("sluicegate");
        let pool = PgPoolOptions::new()
            .max_connections(self.max_connections)
            .acquire_timeout(NODE_ACQUIRE_TIMEOUT)
            .test_before_acquire(false)
            .after_connect(|conn, _| {
                Box::pin(async move {
                    sqlx::Executor::execute(&mut *conn, crate::store::postgres::SESSION_SETTINGS)
                        .await
                        .map(|_| ())
                })
            })
            .connect_lazy_with(options);
        let target: Arc<dyn Target> = Arc::new(PgTarget::new(pool, None));
        open.insert(node.to_owned(), target.clone());
        Ok(target)
    }
}
