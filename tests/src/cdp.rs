//! A headless Chromium driven through the DevTools protocol, for the inspector's browser test:
//! start it on a page, evaluate JavaScript in the page, take screenshots. The protocol runs
//! over a WebSocket; the small client here speaks just what that needs (text frames, masked
//! as a client must, fragmented replies, pings), over `std::net`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use host::testkit::{TempDir, workspace_root};
use serde_json::{Value, json};

/// Where the browser tests leave their screenshots, for a person to look at.
pub fn screenshot_dir() -> PathBuf {
    host::testkit::fixture_target_dir()
        .parent()
        .map(|p| p.join("inspector-screenshots"))
        .unwrap_or_else(|| PathBuf::from("inspector-screenshots"))
}

/// Makes sure Chromium is installed (`scripts/install-chromium.sh`, which installs Debian's
/// `chromium` package where it is missing) and returns its path. Fails, never skips, when it
/// cannot be had.
pub fn chromium() -> anyhow::Result<PathBuf> {
    let script = workspace_root().join("scripts/install-chromium.sh");
    let out = host::testkit::output_within(
        {
            let mut c = Command::new("sh");
            c.arg(&script);
            c
        },
        Duration::from_secs(900),
    )?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "chromium is needed for the inspector's browser test and could not be installed by {}:\n{}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let path = stdout.lines().last().unwrap_or("").trim();
    anyhow::ensure!(!path.is_empty(), "{} printed no path", script.display());
    Ok(PathBuf::from(path))
}

/// A running headless Chromium with one page, killed on drop.
pub struct Browser {
    child: Child,
    _profile: TempDir,
    ws: WebSocket,
    next_id: u64,
}

impl std::fmt::Debug for Browser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Browser")
            .field("pid", &self.child.id())
            .finish()
    }
}

impl Browser {
    /// Starts `chromium` headless on `url` with a fresh profile and attaches to the page.
    pub fn open(chromium: &Path, url: &str) -> anyhow::Result<Browser> {
        let profile = TempDir::new("chromium-profile");
        // Its own temporary files too (`org.chromium.Chromium.*`, which a killed Chromium
        // leaves behind): inside the profile, removed with it.
        let tmp = profile.path().join("tmp");
        std::fs::create_dir_all(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        let child = Command::new(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--remote-debugging-port=0",
                "--window-size=1280,860",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .env("TMPDIR", &tmp)
            .arg(url)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group, with the helpers it starts: ended together (`Drop`).
            .process_group(0)
            .spawn()
            .with_context(|| format!("cannot start {}", chromium.display()))?;
        let mut browser = Browser {
            child,
            ws: WebSocket::placeholder(),
            _profile: profile,
            next_id: 0,
        };
        // Chromium writes the port it picked into the profile once it listens.
        let port_file = browser._profile.path().join("DevToolsActivePort");
        let port: u16 = wait_for("chromium's DevTools port", Duration::from_secs(60), || {
            if let Ok(Some(status)) = browser.child.try_wait() {
                bail!("chromium exited early: {status}");
            }
            Ok(std::fs::read_to_string(&port_file)
                .ok()
                .and_then(|t| t.lines().next()?.trim().parse().ok()))
        })?;
        let page = wait_for("the page target", Duration::from_secs(60), || {
            let list = http_get(port, "/json/list")?;
            let targets: Value = serde_json::from_str(&list)?;
            Ok(targets.as_array().and_then(|ts| {
                ts.iter()
                    .find(|t| t["type"] == "page")
                    .and_then(|t| t["webSocketDebuggerUrl"].as_str().map(str::to_owned))
            }))
        })?;
        let path = page
            .split_once(&format!(":{port}"))
            .map(|(_, p)| p.to_owned())
            .with_context(|| format!("unexpected target url {page}"))?;
        browser.ws = WebSocket::connect(port, &path)?;
        Ok(browser)
    }

    /// Sends a DevTools command and returns its `result`.
    pub fn call(&mut self, method: &str, params: Value) -> anyhow::Result<Value> {
        self.next_id += 1;
        let id = self.next_id;
        self.ws
            .send(&json!({"id": id, "method": method, "params": params}).to_string())?;
        loop {
            let msg: Value = serde_json::from_str(&self.ws.recv()?)?;
            if msg["id"] == id {
                if let Some(e) = msg.get("error") {
                    bail!("{method} failed: {e}");
                }
                return Ok(msg["result"].clone());
            }
        }
    }

    /// Evaluates `expression` in the page and returns its value (JSON).
    pub fn eval(&mut self, expression: &str) -> anyhow::Result<Value> {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true}),
        )?;
        if let Some(e) = r.get("exceptionDetails") {
            bail!("{expression} threw: {e}");
        }
        Ok(r["result"]["value"].clone())
    }

    /// Evaluates `expression` until its value satisfies `pred`; fails after `timeout` with the
    /// last value.
    pub fn eval_until(
        &mut self,
        what: &str,
        expression: &str,
        timeout: Duration,
        mut pred: impl FnMut(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.eval(expression)?;
            if pred(&v) {
                return Ok(v);
            }
            if Instant::now() > deadline {
                bail!("timed out after {timeout:?} waiting for {what}; {expression} = {v}");
            }
            // The page re-renders on its own schedule; ask again shortly.
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Saves a PNG screenshot of the page to `path`.
    pub fn screenshot(&mut self, path: &Path) -> anyhow::Result<()> {
        let r = self.call("Page.captureScreenshot", json!({"format": "png"}))?;
        let data = r["data"].as_str().context("no screenshot data")?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, base64_decode(data)?)
            .with_context(|| format!("cannot write {}", path.display()))
    }
}

impl Drop for Browser {
    /// Ends Chromium and its helpers (renderer, GPU, network service: its process group),
    /// and waits until none is left before the profile is removed: killed alone, the main
    /// process left helpers writing into the profile, which then outlived the test (a
    /// megabyte in the temp dir a run).
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let signal = |sig: &str| {
            Command::new("kill")
                .args([sig, "--", &group])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        if !signal("-KILL") {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        // Not children of ours: no wait to block in, so the group is asked until it is empty.
        let deadline = Instant::now() + Duration::from_secs(10);
        while signal("-0") && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        match f() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) if Instant::now() > deadline => {
                return Err(e.context(format!("waiting for {what}")));
            }
            Err(_) => {}
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn http_get(port: u16, path: &str) -> anyhow::Result<String> {
    let mut conn = TcpStream::connect(("127.0.0.1", port))?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )?;
    // Chromium keeps the connection open: read the body by its length.
    let mut reader = BufReader::new(conn);
    let mut length = 0usize;
    loop {
        let mut h = String::new();
        reader.read_line(&mut h)?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((name, value)) = h.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse()?;
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body)?;
    Ok(String::from_utf8(body)?)
}

/// A client WebSocket: text messages only.
struct WebSocket {
    conn: Option<BufReader<TcpStream>>,
}

impl WebSocket {
    fn placeholder() -> WebSocket {
        WebSocket { conn: None }
    }

    fn connect(port: u16, path: &str) -> anyhow::Result<WebSocket> {
        let mut conn = TcpStream::connect(("127.0.0.1", port))?;
        conn.set_read_timeout(Some(Duration::from_secs(60)))?;
        // Any 16 bytes, base64: the server only echoes a hash of it.
        write!(
            conn,
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: aG1yLWluc3BlY3Rvci10ZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n"
        )?;
        let mut reader = BufReader::new(conn);
        let mut status = String::new();
        reader.read_line(&mut status)?;
        anyhow::ensure!(status.contains(" 101 "), "websocket refused: {status:?}");
        loop {
            let mut h = String::new();
            reader.read_line(&mut h)?;
            if h.trim_end().is_empty() {
                break;
            }
        }
        Ok(WebSocket { conn: Some(reader) })
    }

    fn conn(&mut self) -> anyhow::Result<&mut BufReader<TcpStream>> {
        self.conn.as_mut().context("not connected")
    }

    fn write_frame(&mut self, opcode: u8, payload: &[u8]) -> anyhow::Result<()> {
        let mut frame = vec![0x80 | opcode];
        let len = payload.len();
        if len < 126 {
            frame.push(0x80 | len as u8);
        } else if len <= u16::MAX as usize {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(len as u64).to_be_bytes());
        }
        let mask = [0x5a, 0x13, 0xc7, 0x2e];
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        let conn = self.conn()?.get_mut();
        conn.write_all(&frame)?;
        conn.flush()?;
        Ok(())
    }

    fn send(&mut self, text: &str) -> anyhow::Result<()> {
        self.write_frame(0x1, text.as_bytes())
    }

    /// The next text message (fragments joined; pings answered).
    fn recv(&mut self) -> anyhow::Result<String> {
        let mut message = Vec::new();
        loop {
            let conn = self.conn()?;
            let mut head = [0u8; 2];
            conn.read_exact(&mut head)?;
            let (fin, opcode) = (head[0] & 0x80 != 0, head[0] & 0x0f);
            let masked = head[1] & 0x80 != 0;
            let mut len = u64::from(head[1] & 0x7f);
            if len == 126 {
                let mut b = [0u8; 2];
                conn.read_exact(&mut b)?;
                len = u64::from(u16::from_be_bytes(b));
            } else if len == 127 {
                let mut b = [0u8; 8];
                conn.read_exact(&mut b)?;
                len = u64::from_be_bytes(b);
            }
            let mut mask = [0u8; 4];
            if masked {
                conn.read_exact(&mut mask)?;
            }
            let mut payload = vec![0u8; usize::try_from(len)?];
            conn.read_exact(&mut payload)?;
            if masked {
                for (i, b) in payload.iter_mut().enumerate() {
                    *b ^= mask[i % 4];
                }
            }
            match opcode {
                0x0..=0x2 => {
                    message.extend_from_slice(&payload);
                    if fin {
                        return Ok(String::from_utf8(message)?);
                    }
                }
                0x8 => bail!("the browser closed the DevTools connection"),
                0x9 => self.write_frame(0xA, &payload)?,
                _ => {}
            }
        }
    }
}

fn base64_decode(text: &str) -> anyhow::Result<Vec<u8>> {
    fn value(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let bytes: Vec<u8> = text.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        let mut got = 0;
        for &c in chunk {
            if c == b'=' {
                break;
            }
            n = (n << 6) | value(c).with_context(|| format!("not base64: {:?}", c as char))?;
            got += 1;
        }
        n <<= 6 * (4 - got);
        let b = n.to_be_bytes();
        out.extend_from_slice(&b[1..got.max(1)]);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_decodes_with_and_without_padding() {
        let cases: [(&str, &[u8]); 5] = [
            ("", b""),
            ("aG1y", b"hmr"),
            ("aG1yLQ==", b"hmr-"),
            ("aG1yLWk=", b"hmr-i"),
            ("iVBORw0KGgo=", b"\x89PNG\r\n\x1a\n"),
        ];
        for (text, bytes) in cases {
            assert_eq!(
                super::base64_decode(text).expect("decodes"),
                bytes,
                "{text}"
            );
        }
    }
}
