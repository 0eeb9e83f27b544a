//! Test-support layer: Debian's headless Chromium, driven through ChromeDriver's WebDriver
//! HTTP API (packages `chromium` and `chromium-driver`), inside a host's network namespace, so
//! the page under test is loaded from that host's `127.0.0.1`.
//!
//! [`Browser::start`] runs `chromedriver` in the namespace (its own `HOME` and profile under
//! the test's temp dir, Chromium with the flags a closed network needs) and opens a session;
//! every WebDriver call is a `curl` inside the namespace. Dropping it ends the session and
//! kills chromedriver (and Chromium with it); anything left dies with the namespace.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::cmd::{Cmd, wait_until};
use crate::net::Host;

/// The port chromedriver listens on inside the namespace.
const PORT: u16 = 9515;

/// A headless Chromium session (see the module documentation).
#[derive(Debug)]
pub struct Browser {
    ns: String,
    session: String,
    driver: Option<Child>,
}

/// Fails with what to install when Chromium or ChromeDriver is missing.
pub fn require_chromium() -> Result<()> {
    for bin in ["/usr/bin/chromium", "/usr/bin/chromedriver"] {
        if !Path::new(bin).exists() {
            bail!(
                "{bin} is missing: install Debian's chromium and chromium-driver (.ci/install does)"
            );
        }
    }
    Ok(())
}

impl Browser {
    /// Starts chromedriver and a Chromium session in `host`'s namespace, with a window of
    /// `width` x `height`; `dir` holds its profile and logs.
    pub fn start(host: &Host, dir: &Path, width: u32, height: u32) -> Result<Self> {
        require_chromium()?;
        let home = dir.join("home");
        std::fs::create_dir_all(&home)?;
        let driver = Cmd::new("ip")
            .args(["netns", "exec", host.ns(), "env"])
            .arg(format!("HOME={}", home.display()))
            .args(["chromedriver", &format!("--port={PORT}")])
            .spawn_to(&dir.join("chromedriver.out"), &dir.join("chromedriver.err"))
            .context("starting chromedriver")?;
        let mut b = Self {
            ns: host.ns().to_owned(),
            session: String::new(),
            driver: Some(driver),
        };
        wait_until(
            "chromedriver to answer",
            Duration::from_secs(20),
            Duration::from_millis(100),
            || b.call("GET", "/status", None).map(drop),
        )?;
        let profile: PathBuf = dir.join("profile");
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--hide-scrollbars",
                    format!("--window-size={width},{height}"),
                    format!("--user-data-dir={}", profile.display()),
                ]
            }
        }}});
        let v = b.call("POST", "/session", Some(&caps))?;
        b.session = v["sessionId"]
            .as_str()
            .with_context(|| format!("no session id in {v}"))?
            .to_owned();
        Ok(b)
    }

    /// One WebDriver call; returns its `value`.
    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value> {
        let mut cmd = Cmd::new("ip")
            .args(["netns", "exec", &self.ns, "curl", "-sS", "-X", method])
            .args(["-H", "Content-Type: application/json"])
            .timeout(Duration::from_secs(60));
        if let Some(b) = body {
            cmd = cmd.args(["--data-binary", &b.to_string()]);
        }
        let out = cmd.arg(format!("http://127.0.0.1:{PORT}{path}")).run_ok()?;
        let v: Value = serde_json::from_str(&out.stdout)
            .with_context(|| format!("WebDriver {method} {path} answered {:?}", out.stdout))?;
        if v["value"]["error"].is_string() && v["value"]["message"].is_string() {
            bail!(
                "WebDriver {method} {path}: {} {}",
                v["value"]["error"],
                v["value"]["message"]
            );
        }
        Ok(v["value"].clone())
    }

    /// Loads `url`.
    pub fn goto(&self, url: &str) -> Result<()> {
        self.call(
            "POST",
            &format!("/session/{}/url", self.session),
            Some(&json!({ "url": url })),
        )
        .map(drop)
    }

    /// Runs `script` (a function body; `return` gives the value) in the page.
    pub fn eval(&self, script: &str) -> Result<Value> {
        self.call(
            "POST",
            &format!("/session/{}/execute/sync", self.session),
            Some(&json!({ "script": script, "args": [] })),
        )
    }

    /// A PNG of the window, written to `path`.
    pub fn screenshot(&self, path: &Path) -> Result<Vec<u8>> {
        let v = self.call(
            "GET",
            &format!("/session/{}/screenshot", self.session),
            None,
        )?;
        let b64 = v.as_str().context("the screenshot is not a string")?;
        let png = decode_base64(b64)?;
        std::fs::write(path, &png)?;
        Ok(png)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.call("DELETE", &format!("/session/{}", self.session), None);
        }
        if let Some(mut d) = self.driver.take() {
            let _ = d.kill();
            let _ = d.wait();
        }
    }
}

/// Standard base64 (with padding), as WebDriver sends screenshots.
fn decode_base64(s: &str) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.bytes().filter(|c| !c.is_ascii_whitespace()) {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => break,
            _ => bail!("not base64: {:?}", c as char),
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Ok(out)
}

/// Width and height from a PNG's header.
pub fn png_size(png: &[u8]) -> Result<(u32, u32)> {
    if png.len() < 24 || &png[..8] != b"\x89PNG\r\n\x1a\n" || &png[12..16] != b"IHDR" {
        bail!("not a PNG");
    }
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    Ok((be(&png[16..20]), be(&png[20..24])))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64() {
        assert_eq!(decode_base64("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(decode_base64("aGk=").unwrap(), b"hi");
        assert!(decode_base64("a*b").is_err());
    }
}
