//! A real `redis-server` (Debian's) on a free port, for scale-out tests.

use std::process::Stdio;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use super::eventually;

/// A running (or stopped) redis-server on a fixed port.
pub struct Redis {
    /// The port, kept across restarts.
    pub port: u16,
    /// The process while it runs.
    child: Option<Child>,
}

impl Redis {
    /// A free port with nothing on it yet.
    pub fn reserve() -> Redis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Redis { port, child: None }
    }

    /// Starts redis-server on a free port and waits until it answers.
    pub async fn start() -> Redis {
        let mut redis = Redis::reserve();
        redis.launch().await;
        redis
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// (Re)starts the server on its port and waits for `PONG`.
    pub async fn launch(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server (apt-get install redis-server)");
        self.child = Some(child);
        eventually("redis-server to answer PING", async || {
            self.ping().await.then_some(())
        })
        .await;
    }

    async fn ping(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)).await else {
            return false;
        };
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").await.is_ok()
            && s.read_exact(&mut buf).await.is_ok()
            && &buf == b"+PONG\r\n"
    }

    /// Kills the server (an outage) and waits until it is gone.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
            let _ = child.wait().await;
        }
    }
}

/// A free loopback port.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A scratch directory for servers' files, removed when dropped.
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn new(what: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!(
            "pulse-{what}-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn spawn(args: &[String]) -> Child {
    Command::new("redis-server")
        .args(args)
        // A replica syncs at once (Redis waits 5 s by default for others to
        // share a diskless transfer): a failover needs a replica in sync.
        .args(["--repl-diskless-sync-delay", "0"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("redis-server (apt-get install redis-server)")
}

/// `redis-cli -p PORT ARGS…`'s output.
pub async fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .await
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A Redis Cluster of three masters, each with one replica, on free ports,
/// from Debian's `redis-server` and `redis-cli --cluster create`. A dead
/// master's replica takes over within about two seconds.
pub struct RedisCluster {
    /// The nodes' ports and processes (`None` once killed).
    nodes: Vec<(u16, Option<Child>)>,
    _dir: Scratch,
}

impl RedisCluster {
    pub async fn start() -> RedisCluster {
        let dir = Scratch::new("cluster");
        let mut nodes = Vec::new();
        for _ in 0..6 {
            let port = free_port();
            let child = spawn(&[
                "--port".into(),
                port.to_string(),
                "--cluster-port".into(),
                free_port().to_string(),
                "--bind".into(),
                "127.0.0.1".into(),
                "--cluster-enabled".into(),
                "yes".into(),
                "--cluster-config-file".into(),
                format!("nodes-{port}.conf"),
                "--cluster-node-timeout".into(),
                "1000".into(),
                "--dir".into(),
                dir.0.display().to_string(),
                "--save".into(),
                "".into(),
                "--appendonly".into(),
                "no".into(),
            ]);
            nodes.push((port, Some(child)));
        }
        for (port, _) in &nodes {
            eventually("a cluster node to answer", async || {
                (cli(*port, &["PING"]).await.trim() == "PONG").then_some(())
            })
            .await;
        }
        let addresses: Vec<String> = nodes
            .iter()
            .map(|(p, _)| format!("127.0.0.1:{p}"))
            .collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .await
            .expect("redis-cli --cluster create");
        assert!(
            created.status.success(),
            "{}",
            String::from_utf8_lossy(&created.stdout)
        );
        let cluster = RedisCluster { nodes, _dir: dir };
        cluster.wait_ok().await;
        // Every replica in sync, so that each master's can take over.
        for (port, _) in &cluster.nodes {
            eventually("the cluster's replicas to be in sync", async || {
                let info = cli(*port, &["INFO", "replication"]).await;
                (info.contains("role:master") || info.contains("master_link_status:up"))
                    .then_some(())
            })
            .await;
        }
        cluster
    }

    /// `redis+cluster://` with two of the nodes (the rest are discovered).
    pub fn url(&self) -> String {
        format!(
            "redis+cluster://127.0.0.1:{},127.0.0.1:{}",
            self.nodes[0].0, self.nodes[1].0
        )
    }

    /// Waits until every live node says the cluster is ok and has three
    /// masters serving all slots.
    pub async fn wait_ok(&self) {
        for (port, child) in &self.nodes {
            if child.is_none() {
                continue;
            }
            eventually("the cluster to be ok", async || {
                cli(*port, &["CLUSTER", "INFO"])
                    .await
                    .contains("cluster_state:ok")
                    .then_some(())
            })
            .await;
        }
    }

    /// The port of the master that holds `key`'s slot.
    pub async fn master_of(&self, key: &str) -> u16 {
        let port = self.live_port();
        let slot: u16 = cli(port, &["CLUSTER", "KEYSLOT", key])
            .await
            .trim()
            .parse()
            .unwrap();
        let nodes = cli(port, &["CLUSTER", "NODES"]).await;
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            if fields.len() < 9 || !fields[2].contains("master") || fields[2].contains("fail") {
                continue;
            }
            let serves = fields[8..].iter().any(|range| {
                let (a, b) = range.split_once('-').unwrap_or((range, range));
                match (a.parse::<u16>(), b.parse::<u16>()) {
                    (Ok(a), Ok(b)) => (a..=b).contains(&slot),
                    _ => false,
                }
            });
            if serves {
                let address = fields[1].split('@').next().unwrap();
                return address.rsplit(':').next().unwrap().parse().unwrap();
            }
        }
        panic!("no master serves slot {slot}:\n{nodes}");
    }

    fn live_port(&self) -> u16 {
        self.nodes
            .iter()
            .find(|(_, c)| c.is_some())
            .map(|(p, _)| *p)
            .unwrap()
    }

    /// Kills the node on `port` (SIGKILL); its replica takes its slots a
    /// second or two later.
    pub async fn kill(&mut self, port: u16) {
        let node = self.nodes.iter_mut().find(|(p, _)| *p == port).unwrap();
        if let Some(mut child) = node.1.take() {
            let _ = child.kill().await;
            let _ = child.wait().await;
        }
    }
}

/// One master, one replica and three sentinels watching them (master name
/// `pulse`), on free ports. A dead master's replica is promoted within
/// about two seconds.
pub struct RedisSentinel {
    /// The master's and the replica's ports and processes.
    pub servers: Vec<(u16, Option<Child>)>,
    /// The sentinels' ports.
    sentinels: Vec<(u16, Child)>,
    _dir: Scratch,
}

impl RedisSentinel {
    pub async fn start() -> RedisSentinel {
        let dir = Scratch::new("sentinel");
        let master = free_port();
        let replica = free_port();
        let base = |port: u16| -> Vec<String> {
            vec![
                "--port".into(),
                port.to_string(),
                "--bind".into(),
                "127.0.0.1".into(),
                "--save".into(),
                "".into(),
                "--appendonly".into(),
                "no".into(),
                // A replica writes the master's snapshot to its directory.
                "--dir".into(),
                dir.0.display().to_string(),
            ]
        };
        let mut servers = vec![(master, Some(spawn(&base(master))))];
        let mut args = base(replica);
        args.extend(["--replicaof".into(), "127.0.0.1".into(), master.to_string()]);
        servers.push((replica, Some(spawn(&args))));
        eventually("the replica to be in sync", async || {
            cli(replica, &["INFO", "replication"])
                .await
                .contains("master_link_status:up")
                .then_some(())
        })
        .await;
        let mut sentinels = Vec::new();
        for _ in 0..3 {
            let port = free_port();
            let conf = dir.0.join(format!("sentinel-{port}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {dir}\n\
                     sentinel monitor pulse 127.0.0.1 {master} 2\n\
                     sentinel down-after-milliseconds pulse 1000\n\
                     sentinel failover-timeout pulse 4000\n\
                     sentinel parallel-syncs pulse 1\n",
                    dir = dir.0.display()
                ),
            )
            .unwrap();
            let child = spawn(&[conf.display().to_string(), "--sentinel".into()]);
            sentinels.push((port, child));
        }
        for (port, _) in &sentinels {
            eventually(
                "a sentinel to know the replica and the others",
                async || {
                    let info = cli(*port, &["SENTINEL", "MASTER", "pulse"]).await;
                    let field = |name: &str| {
                        let lines: Vec<&str> = info.lines().collect();
                        lines
                            .iter()
                            .position(|l| *l == name)
                            .and_then(|i| lines.get(i + 1))
                            .and_then(|v| v.parse::<u32>().ok())
                    };
                    (field("num-slaves") == Some(1) && field("num-other-sentinels") == Some(2))
                        .then_some(())
                },
            )
            .await;
        }
        RedisSentinel {
            servers,
            sentinels,
            _dir: dir,
        }
    }

    /// `redis+sentinel://` with every sentinel.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .sentinels
            .iter()
            .map(|(p, _)| format!("127.0.0.1:{p}"))
            .collect();
        format!("redis+sentinel://{}/pulse", hosts.join(","))
    }

    /// The port the sentinels name as the master now.
    pub async fn master(&self) -> u16 {
        let answer = cli(
            self.sentinels[0].0,
            &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", "pulse"],
        )
        .await;
        answer.lines().nth(1).unwrap().trim().parse().unwrap()
    }

    /// Kills the master (SIGKILL) and waits until the sentinels name the
    /// replica.
    pub async fn kill_master(&mut self) -> u16 {
        let old = self.master().await;
        let node = self.servers.iter_mut().find(|(p, _)| *p == old).unwrap();
        if let Some(mut child) = node.1.take() {
            let _ = child.kill().await;
            let _ = child.wait().await;
        }
        eventually("the sentinels to promote the replica", async || {
            let now = self.master().await;
            (now != old).then_some(now)
        })
        .await
    }
}
