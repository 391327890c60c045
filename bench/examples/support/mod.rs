//! What the bench examples share: a node of the build under test (`ordo dev`), started and
//! waited for.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ordo_client::Client;

/// A node the example started, killed when dropped.
pub struct DevNode {
    pub child: Child,
    pub endpoint: String,
    pub client: Client,
}

impl DevNode {
    /// Starts `bin dev` on `data` and 127.0.0.1:`port` with `args` more, and waits until it
    /// answers `Status`.
    pub async fn start(bin: &str, data: &str, port: &str, args: &[String]) -> DevNode {
        let child = Command::new(bin)
            .args(["dev", "--data-dir", data, "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the node");
        let endpoint = format!("http://127.0.0.1:{port}");
        let client = loop {
            if let Ok(c) = Client::connect(endpoint.clone()).await {
                if c.status().await.is_ok() {
                    break c;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        DevNode {
            child,
            endpoint,
            client,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for DevNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
