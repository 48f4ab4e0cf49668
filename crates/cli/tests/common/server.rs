//! A real `distill serve` process on a loopback port, for the server tests.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use super::{command, distill, text};

pub struct Server {
    pub child: Child,
    pub url: String,
    pub db: PathBuf,
}

impl Server {
    /// Starts `distill serve MODEL --db DB --name tiny --port 0 EXTRA...` and waits until it listens.
    pub fn start(model: &Path, db: &Path, extra: &[&str]) -> Server {
        let mut child = command()
            .args(["serve", model.to_str().unwrap(), "--db", db.to_str().unwrap(), "--name", "tiny", "--port", "0"])
            .args(extra)
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("distill serve starts");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            // Reads until the address shows, then keeps draining so the server never blocks on
            // a full pipe.
            let mut seen = Some(String::new());
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let Some(text) = seen.as_mut() else { continue };
                if let Some(at) = line.find(" on http://") {
                    let addr = line[at + 4..].split_whitespace().next().unwrap_or("").to_string();
                    let _ = tx.send(Ok(addr));
                    seen = None;
                } else {
                    text.push_str(&line);
                    text.push('\n');
                }
            }
            if let Some(text) = seen {
                let _ = tx.send(Err(text));
            }
        });
        let url = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(Ok(url)) => url,
            Ok(Err(stderr)) => panic!("distill serve did not start:\n{stderr}"),
            Err(e) => panic!("distill serve did not print its address: {e}"),
        };
        Server { child, url, db: db.to_path_buf() }
    }

    pub fn post(&self, path: &str, key: &str, body: &str) -> (u16, String, Option<String>) {
        let result = ureq::post(&format!("{}{path}", self.url))
            .set("Authorization", &format!("Bearer {key}"))
            .set("Content-Type", "application/json")
            .timeout(Duration::from_secs(120))
            .send_string(body);
        response(result)
    }

    pub fn get(&self, path: &str, key: Option<&str>) -> (u16, String, Option<String>) {
        let mut req = ureq::get(&format!("{}{path}", self.url)).timeout(Duration::from_secs(60));
        if let Some(key) = key {
            req = req.set("Authorization", &format!("Bearer {key}"));
        }
        response(req.call())
    }

    /// Kills the server the hard way (SIGKILL), as a crash would.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// (status, body, Retry-After) whatever the status.
fn response(result: Result<ureq::Response, ureq::Error>) -> (u16, String, Option<String>) {
    let resp = match result {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("HTTP transport error: {e}"),
    };
    let status = resp.status();
    let retry = resp.header("Retry-After").map(str::to_string);
    (status, resp.into_string().unwrap_or_default(), retry)
}

/// Creates a key in `db` with `distill keys create` and returns its secret.
pub fn create_key(db: &Path, name: &str, extra: &[&str]) -> String {
    let mut args = vec!["keys", "create", "--db", db.to_str().unwrap(), "--name", name];
    args.extend_from_slice(extra);
    let out = distill(&args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout).trim().to_string()
}
