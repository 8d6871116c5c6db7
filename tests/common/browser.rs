//! Renders a page in headless Chromium: a screenshot and the DOM after the page's
//! scripts ran, so a test can check that `analyze`'s charts were really laid out (the
//! page writes `<chart id> <polylines> <their total width>` into `<pre id="render-check">`).
#![allow(dead_code, unreachable_pub)]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Longest one Chromium run may take.
const DEADLINE: Duration = Duration::from_secs(60);

/// What the browser made of a page.
#[derive(Debug)]
pub struct Rendered {
    /// The DOM after load (`--dump-dom`).
    pub dom: String,
    /// The lines of `<pre id="render-check">`: chart id, polyline count, the polylines'
    /// summed rendered width in pixels.
    pub render_check: Vec<(String, usize, f64)>,
    pub png_width: u32,
    pub png_height: u32,
}

/// Chromium: /usr/bin/chromium, else `chromium` or `chromium-browser` on the PATH.
pub fn chromium() -> Option<PathBuf> {
    let fixed = Path::new("/usr/bin/chromium");
    if fixed.is_file() {
        return Some(fixed.to_owned());
    }
    let path = std::env::var_os("PATH")?;
    ["chromium", "chromium-browser"]
        .iter()
        .flat_map(|name| std::env::split_paths(&path).map(move |dir| dir.join(name)))
        .find(|candidate| candidate.is_file())
}

/// Takes a 1280x2400 screenshot of `html` into `screenshot` and dumps its DOM.
pub fn render(html: &Path, screenshot: &Path) -> Result<Rendered, String> {
    let browser = chromium().ok_or("no Chromium: install the `chromium` package")?;
    let html = html.canonicalize().map_err(|e| format!("{}: {e}", html.display()))?;
    let url = file_url(&html);

    let _ = std::fs::remove_file(screenshot);
    let screenshot_arg = format!("--screenshot={}", screenshot.display());
    run(&browser, &["--window-size=1280,2400", &screenshot_arg, &url], None)?;
    let png =
        std::fs::read(screenshot).map_err(|e| format!("Chromium wrote no screenshot {}: {e}", screenshot.display()))?;
    if png.len() < 24 || !png.starts_with(b"\x89PNG") {
        return Err(format!("{} is not a PNG ({} bytes)", screenshot.display(), png.len()));
    }
    // The IHDR chunk comes first: width and height, big-endian, at bytes 16..24.
    let be = |at: usize| u32::from_be_bytes([png[at], png[at + 1], png[at + 2], png[at + 3]]);
    let (png_width, png_height) = (be(16), be(20));

    let dump = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;
    let dom_file = dump.path().join("dom.html");
    run(&browser, &["--dump-dom", &url], Some(&dom_file))?;
    let dom = std::fs::read_to_string(&dom_file).map_err(|e| format!("reading the dumped DOM: {e}"))?;
    let render_check = render_check(&dom)?;
    Ok(Rendered { dom, render_check, png_width, png_height })
}

/// Runs Chromium once with a fresh profile; its stdout goes to `stdout` (a file, not a
/// pipe: helper processes that outlive the browser may hold it open), stderr is dropped.
fn run(browser: &Path, args: &[&str], stdout: Option<&Path>) -> Result<(), String> {
    let profile = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;
    let out = match stdout {
        Some(path) => Stdio::from(File::create(path).map_err(|e| format!("{}: {e}", path.display()))?),
        None => Stdio::null(),
    };
    let mut child = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("starting {}: {e}", browser.display()))?;
    let deadline = Instant::now() + DEADLINE;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("Chromium {args:?} took more than {DEADLINE:?}; killed"));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => return Err(format!("waiting for Chromium: {e}")),
        }
    };
    if status.success() { Ok(()) } else { Err(format!("Chromium {args:?} failed: {status}")) }
}

/// `file://` and the absolute path, with the bytes a URL path cannot hold escaped.
fn file_url(path: &Path) -> String {
    let mut url = String::from("file://");
    for b in path.to_string_lossy().bytes() {
        if b.is_ascii_alphanumeric() || b"/-._~".contains(&b) {
            url.push(char::from(b));
        } else {
            url.push_str(&format!("%{b:02X}"));
        }
    }
    url
}

/// The `<id> <count> <width>` lines of `<pre id="render-check">`.
fn render_check(dom: &str) -> Result<Vec<(String, usize, f64)>, String> {
    let start = dom.find("<pre id=\"render-check\"").ok_or("the DOM has no <pre id=\"render-check\">")?;
    let body = &dom[start..];
    let body = &body[body.find('>').map_or(body.len(), |i| i + 1)..];
    let body = &body[..body.find("</pre>").ok_or("<pre id=\"render-check\"> is not closed")?];
    body.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            match fields[..] {
                [id, count, width] => match (count.parse(), width.parse()) {
                    (Ok(count), Ok(width)) => Ok((id.to_owned(), count, width)),
                    _ => Err(format!("render-check line {line:?} is not `<id> <count> <width>`")),
                },
                _ => Err(format!("render-check line {line:?} is not `<id> <count> <width>`")),
            }
        })
        .collect()
}
