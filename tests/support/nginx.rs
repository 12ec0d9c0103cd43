//! A real nginx (Debian's) in front of pulse instances, on a free loopback
//! port, configured with the very `nginx` block of the README: the documented
//! setup is what the tests run.

use std::process::Stdio;

use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use super::eventually;

/// A running nginx; stopped on drop.
pub struct Nginx {
    /// `127.0.0.1:PORT`, where it listens.
    pub addr: String,
    /// The process.
    _child: Child,
    /// Its configuration and temporary files.
    _dir: TempDir,
}

/// A directory removed on drop.
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The README's nginx block, for `upstreams` (one `host:port` per instance)
/// and listening on `listen` instead of 443 with TLS.
pub fn documented_config(upstreams: &[&str], listen: &str) -> String {
    let readme = include_str!("../../README.md");
    let start = readme
        .find("```nginx\n")
        .expect("an nginx block in the README")
        + 9;
    let block = &readme[start..];
    let block = &block[..block.find("```").expect("the block ends")];
    let mut out = String::new();
    let mut servers = upstreams.iter();
    for line in block.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("server 10.0.0.") {
            // The documented upstream lines, pointed at the test's instances.
            if let Some(addr) = servers.next() {
                let rest = trimmed.split_once(' ').map(|x| x.1).unwrap_or_default();
                let options = rest.split_once(' ').map(|x| x.1).unwrap_or(";");
                out.push_str(&format!("    server {addr} {options}\n"));
            }
        } else if trimmed.starts_with("listen 443") {
            out.push_str(&format!("    listen {listen};\n"));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    if let Some(addr) = servers.next() {
        panic!("the README's upstream has fewer servers than instances ({addr})");
    }
    out
}

impl Nginx {
    /// Starts nginx in front of `upstreams` with the README's configuration.
    pub async fn start(upstreams: &[&str]) -> Nginx {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let dir = std::env::temp_dir().join(format!("pulse-nginx-{port}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let d = dir.display();
        let conf = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log stderr warn;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  \
             proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  \
             uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n{}\n}}\n",
            documented_config(upstreams, &addr)
        );
        let path = dir.join("nginx.conf");
        std::fs::write(&path, conf).unwrap();
        let child = Command::new("nginx")
            .args(["-p", &d.to_string(), "-c", &path.display().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("nginx (apt-get install nginx-light)");
        eventually("nginx to listen", async || {
            TcpStream::connect(&addr).await.ok().map(drop)
        })
        .await;
        Nginx {
            addr,
            _child: child,
            _dir: TempDir(dir),
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}
