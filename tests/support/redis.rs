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
