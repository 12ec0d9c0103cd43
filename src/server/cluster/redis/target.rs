//! The three forms `PULSE_REDIS_URL` takes: one server, a Redis Cluster, or
//! a master found (and followed) through Sentinel.
//!
//! | form | example |
//! |---|---|
//! | one server | `redis://[user:password@]host:port[/db]`, `rediss://…`, `unix:///path` |
//! | Redis Cluster | `redis+cluster://[user:password@]host:port,host:port` (any nodes; the rest are discovered) |
//! | Sentinel | `redis+sentinel://[user:password@]host:port,host:port/master-name[/db]` |
//!
//! The credentials of the cluster and Sentinel forms are those of the Redis
//! servers (every node; the master and its replicas), not of the sentinels.

use redis::{ConnectionInfo, IntoConnectionInfo};

/// Where the Redis is.
#[derive(Debug, Clone)]
pub(super) enum Target {
    /// One server.
    Single(ConnectionInfo),
    /// Some nodes of a Redis Cluster.
    Cluster(Vec<ConnectionInfo>),
    /// The sentinels watching the master `master`, and how to reach the
    /// master once they named it (credentials, database).
    Sentinel {
        sentinels: Vec<ConnectionInfo>,
        master: String,
        node: redis::RedisConnectionInfo,
    },
}

const CLUSTER: &str = "redis+cluster://";
const SENTINEL: &str = "redis+sentinel://";

/// Reads `PULSE_REDIS_URL`; the error says what is wrong with it.
pub(super) fn parse(url: &str) -> Result<Target, String> {
    let node = |address: String| {
        address
            .as_str()
            .into_connection_info()
            .map_err(|e| format!("{e}"))
    };
    if let Some(rest) = url.strip_prefix(CLUSTER) {
        let (credentials, hosts) = split_credentials(rest);
        if hosts.contains('/') {
            return Err("a cluster URL names no database or path: \
                        redis+cluster://host:port,host:port"
                .into());
        }
        let nodes = list(hosts)?
            .into_iter()
            .map(|host| node(format!("redis://{credentials}{host}")))
            .collect::<Result<Vec<_>, _>>()?;
        return Ok(Target::Cluster(nodes));
    }
    if let Some(rest) = url.strip_prefix(SENTINEL) {
        let (credentials, rest) = split_credentials(rest);
        let (hosts, path) = rest.split_once('/').ok_or(
            "a Sentinel URL ends with the master's name: \
             redis+sentinel://host:port,host:port/master-name",
        )?;
        let (master, db) = path.split_once('/').unwrap_or((path, ""));
        if master.is_empty() {
            return Err("the Sentinel URL names no master".into());
        }
        let sentinels = list(hosts)?
            .into_iter()
            .map(|host| node(format!("redis://{host}")))
            .collect::<Result<Vec<_>, _>>()?;
        // The master's credentials and database, read the way a plain URL
        // is (one host stands in for it; Sentinel says where it really is).
        let probe = node(format!(
            "redis://{credentials}{}/{db}",
            sentinels_host(hosts)
        ))?;
        return Ok(Target::Sentinel {
            sentinels,
            master: master.to_string(),
            node: probe.redis_settings().clone(),
        });
    }
    if ["redis://", "rediss://", "unix://", "redis+unix://"]
        .iter()
        .any(|scheme| url.starts_with(scheme))
    {
        return Ok(Target::Single(node(url.to_string())?));
    }
    Err("must be a URL like redis://127.0.0.1:6379, \
         redis+cluster://host:port,host:port or \
         redis+sentinel://host:port,host:port/master-name"
        .into())
}

/// `user:password@` (kept with its `@`) and what follows it.
fn split_credentials(rest: &str) -> (&str, &str) {
    match rest.rfind('@') {
        Some(at) => rest.split_at(at + 1),
        None => ("", rest),
    }
}

/// `host:port,host:port` as its hosts.
fn list(hosts: &str) -> Result<Vec<&str>, String> {
    let hosts: Vec<&str> = hosts.split(',').map(str::trim).collect();
    if hosts.iter().any(|host| host.is_empty()) {
        return Err("an empty host in the list".into());
    }
    Ok(hosts)
}

fn sentinels_host(hosts: &str) -> &str {
    hosts.split(',').next().unwrap_or(hosts).trim()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_three_forms() {
        assert!(matches!(
            parse("redis://127.0.0.1:6379"),
            Ok(Target::Single(_))
        ));
        assert!(matches!(
            parse("unix:///run/redis.sock"),
            Ok(Target::Single(_))
        ));
        match parse("redis+cluster://:secret@10.0.0.1:7000, 10.0.0.2:7001") {
            Ok(Target::Cluster(nodes)) => {
                assert_eq!(nodes.len(), 2);
                assert_eq!(nodes[1].addr().to_string(), "10.0.0.2:7001");
                assert_eq!(nodes[1].redis_settings().password(), Some("secret"));
            }
            other => panic!("{other:?}"),
        }
        match parse("redis+sentinel://:pw@s1:26379,s2:26379/mymaster/2") {
            Ok(Target::Sentinel {
                sentinels,
                master,
                node,
            }) => {
                assert_eq!(sentinels.len(), 2);
                assert_eq!(master, "mymaster");
                assert_eq!(node.db(), 2);
                assert_eq!(node.password(), Some("pw"));
                assert_eq!(sentinels[0].redis_settings().password(), None);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_forms_say_why() {
        for bad in [
            "http://x",
            "redis+cluster://",
            "redis+cluster://a:1,,b:2",
            "redis+cluster://a:1/0",
            "redis+sentinel://a:1",
            "redis+sentinel://a:1/",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
