//! Where Redis is: a fixed URL; a master found through Redis Sentinel and followed across
//! failovers (redis-rs connections do not follow a failover by themselves); or a Redis Cluster.
//!
//! - `redis://[:password@]host:port[/db]`
//! - `redis+sentinel://[:password@]host:port[,host:port...]/service[/db]`
//! - `redis+cluster://[:password@]host:port[,host:port...]`

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};
use tokio::sync::watch;

/// A connection to a single Redis (standalone or the Sentinel's master) or to a cluster.
#[derive(Clone)]
pub enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// `redis+cluster://` nodes, as `redis://` URLs.
fn cluster_nodes(url: &str) -> Option<Result<Vec<String>, String>> {
    let rest = url.strip_prefix("redis+cluster://")?;
    let rest = rest.trim_end_matches('/');
    let (auth, hosts) = match rest.rsplit_once('@') {
        Some((a, h)) => (Some(a), h),
        None => (None, rest),
    };
    let nodes: Vec<String> = hosts
        .split(',')
        .filter(|h| !h.is_empty())
        .map(|h| match auth {
            Some(a) => format!("redis://{a}@{h}"),
            None => format!("redis://{h}"),
        })
        .collect();
    Some(if nodes.is_empty() {
        Err("a cluster URL needs at least one host:port".into())
    } else {
        Ok(nodes)
    })
}

/// How often the sentinels are asked where the master is.
const SENTINEL_POLL: Duration = Duration::from_millis(500);

#[derive(Clone, Debug, PartialEq)]
pub struct SentinelSpec {
    pub sentinels: Vec<String>,
    pub service: String,
    pub db: i64,
    pub password: Option<String>,
}

impl SentinelSpec {
    /// Parses a `redis+sentinel://` URL; None for other URLs.
    pub fn parse(url: &str) -> Option<Result<SentinelSpec, String>> {
        let rest = url.strip_prefix("redis+sentinel://")?;
        Some((|| {
            let (auth, rest) = match rest.rsplit_once('@') {
                Some((a, r)) => (Some(a), r),
                None => (None, rest),
            };
            let password = auth
                .map(|a| a.rsplit_once(':').map_or(a, |(_, p)| p).to_owned())
                .filter(|p| !p.is_empty());
            let (hosts, path) = rest
                .split_once('/')
                .ok_or("a sentinel URL needs /service after the hosts")?;
            let sentinels: Vec<String> = hosts
                .split(',')
                .filter(|h| !h.is_empty())
                .map(str::to_owned)
                .collect();
            if sentinels.is_empty() {
                return Err("a sentinel URL needs at least one host:port".into());
            }
            let mut parts = path.split('/');
            let service = parts.next().unwrap_or("").to_owned();
            if service.is_empty() {
                return Err("a sentinel URL needs the master's service name".into());
            }
            let db = match parts.next() {
                None | Some("") => 0,
                Some(d) => d
                    .parse()
                    .map_err(|_| format!("{d:?} is not a database number"))?,
            };
            Ok(SentinelSpec {
                sentinels,
                service,
                db,
                password,
            })
        })())
    }

    fn master_url(&self, addr: &str) -> String {
        match &self.password {
            Some(p) => format!("redis://:{p}@{addr}/{}", self.db),
            None => format!("redis://{addr}/{}", self.db),
        }
    }

    /// Asks each sentinel in turn for the master's address.
    async fn resolve(&self, timeout: Duration) -> Option<String> {
        for s in &self.sentinels {
            let Ok(client) = redis::Client::open(format!("redis://{s}")) else {
                continue;
            };
            let ask = async {
                let mut c = client.get_multiplexed_async_connection().await?;
                redis::cmd("SENTINEL")
                    .arg("get-master-addr-by-name")
                    .arg(&self.service)
                    .query_async::<Option<(String, u16)>>(&mut c)
                    .await
            };
            if let Ok(Ok(Some((host, port)))) = tokio::time::timeout(timeout, ask).await {
                return Some(format!("{host}:{port}"));
            }
        }
        None
    }
}

/// The current connection to the master.
pub struct Endpoint {
    /// (client for subscriptions, connection for commands, URL of the master)
    current: RwLock<(redis::Client, Conn, String)>,
    /// Cluster nodes to subscribe through, tried in turn (announcements reach every node).
    subscribe_nodes: Vec<redis::Client>,
    next_node: AtomicUsize,
    timeout: Duration,
    /// Bumped when the master changes, so that subscribers move too.
    moved: watch::Sender<u64>,
}

fn manager(client: &redis::Client, timeout: Duration) -> Result<ConnectionManager, String> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_number_of_retries(1)
        .set_min_delay(Duration::from_millis(20))
        .set_max_delay(Duration::from_millis(250));
    client
        .get_connection_manager_lazy(config)
        .map_err(|e| format!("cannot use redis at the configured URL: {e}"))
}

impl Endpoint {
    /// Connects lazily to a fixed URL or, for sentinel URLs, to the master the sentinels name
    /// now, and follows it from then on.
    pub async fn connect(url: &str, timeout: Duration) -> Result<Arc<Endpoint>, String> {
        if let Some(nodes) = cluster_nodes(url) {
            let nodes = nodes?;
            let cluster = redis::cluster::ClusterClient::builder(nodes.clone())
                .connection_timeout(timeout)
                .response_timeout(timeout)
                .retries(2)
                .build()
                .map_err(|e| format!("store.url is not usable: {e}"))?;
            let conn = tokio::time::timeout(Duration::from_secs(5), cluster.get_async_connection())
                .await
                .map_err(|_| "the Redis cluster did not answer".to_owned())?
                .map_err(|e| format!("cannot connect to the Redis cluster: {e}"))?;
            let subscribe_nodes = nodes
                .iter()
                .map(|n| redis::Client::open(n.as_str()))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("store.url is not usable: {e}"))?;
            return Ok(Arc::new(Endpoint {
                current: RwLock::new((subscribe_nodes[0].clone(), Conn::Cluster(conn), url.into())),
                subscribe_nodes,
                next_node: AtomicUsize::new(0),
                timeout,
                moved: watch::channel(0).0,
            }));
        }
        let (master_url, spec) = match SentinelSpec::parse(url) {
            None => (url.to_owned(), None),
            Some(spec) => {
                let spec = spec?;
                let addr = spec.resolve(Duration::from_secs(2)).await.ok_or_else(|| {
                    format!(
                        "no sentinel of {} knows the master {:?}",
                        spec.sentinels.join(","),
                        spec.service
                    )
                })?;
                (spec.master_url(&addr), Some(spec))
            }
        };
        let client = redis::Client::open(master_url.as_str())
            .map_err(|e| format!("store.url is not usable: {e}"))?;
        let conn = manager(&client, timeout)?;
        let endpoint = Arc::new(Endpoint {
            current: RwLock::new((client, Conn::Single(conn), master_url)),
            subscribe_nodes: vec![],
            next_node: AtomicUsize::new(0),
            timeout,
            moved: watch::channel(0).0,
        });
        if let Some(spec) = spec {
            tokio::spawn(follow_master(Arc::downgrade(&endpoint), spec));
        }
        Ok(endpoint)
    }

    pub fn conn(&self) -> Conn {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .1
            .clone()
    }

    /// A client to subscribe with; for a cluster, the next node in turn.
    pub fn client(&self) -> redis::Client {
        if !self.subscribe_nodes.is_empty() {
            let i = self.next_node.fetch_add(1, Ordering::Relaxed) % self.subscribe_nodes.len();
            return self.subscribe_nodes[i].clone();
        }
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .clone()
    }

    /// Changes when the master moves.
    pub fn moved(&self) -> watch::Receiver<u64> {
        self.moved.subscribe()
    }
}

/// Polls the sentinels and switches to a new master as soon as they name one.
async fn follow_master(endpoint: Weak<Endpoint>, spec: SentinelSpec) {
    loop {
        tokio::time::sleep(SENTINEL_POLL).await;
        let Some(ep) = endpoint.upgrade() else { return };
        let Some(addr) = spec.resolve(ep.timeout).await else {
            continue;
        };
        let url = spec.master_url(&addr);
        if ep.current.read().unwrap_or_else(|e| e.into_inner()).2 == url {
            continue;
        }
        let Ok(client) = redis::Client::open(url.as_str()) else {
            continue;
        };
        let Ok(conn) = manager(&client, ep.timeout) else {
            continue;
        };
        tracing::warn!(master = %addr, "redis master changed; following it");
        *ep.current.write().unwrap_or_else(|e| e.into_inner()) = (client, Conn::Single(conn), url);
        ep.moved.send_modify(|n| *n += 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentinel_urls_name_hosts_service_db_and_password() {
        let s = SentinelSpec::parse("redis+sentinel://:pw@a:1,b:2/mymaster/3")
            .unwrap()
            .unwrap();
        assert_eq!(s.sentinels, vec!["a:1", "b:2"]);
        assert_eq!(s.service, "mymaster");
        assert_eq!(s.db, 3);
        assert_eq!(s.password.as_deref(), Some("pw"));
        assert_eq!(s.master_url("h:9"), "redis://:pw@h:9/3");
        assert!(SentinelSpec::parse("redis://x").is_none());
        assert!(
            SentinelSpec::parse("redis+sentinel://a:1")
                .unwrap()
                .is_err()
        );
        assert!(SentinelSpec::parse("redis+sentinel:///m").unwrap().is_err());
    }

    #[test]
    fn cluster_urls_list_their_nodes() {
        assert_eq!(
            cluster_nodes("redis+cluster://:pw@a:1,b:2/")
                .unwrap()
                .unwrap(),
            vec!["redis://:pw@a:1", "redis://:pw@b:2"]
        );
        assert!(cluster_nodes("redis://a:1").is_none());
        assert!(cluster_nodes("redis+cluster://").unwrap().is_err());
    }
}
