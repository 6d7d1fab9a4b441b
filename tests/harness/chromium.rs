//! A real headless Chromium driven over the WebDriver protocol (chromedriver, plain HTTP on
//! loopback), shared by the admin pages' test and the kiosk page's test: start the driver, open a
//! session with extra Chromium flags, navigate, find, type, click, run a script, read the page's
//! network log, and save screenshots at given window sizes.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};

use super::{wait_for, Daemon};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";
/// WebDriver's key for "the element" in its JSON.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";
/// How long one WebDriver command may take on a loaded machine (a script may wait for an event).
const COMMAND_LIMIT: Duration = Duration::from_secs(90);

/// Window sizes for screenshots: (label, width, height).
pub const LAPTOP: (&str, u32, u32) = ("laptop", 1280, 900);
pub const TABLET: (&str, u32, u32) = ("tablet", 1280, 800);
pub const PHONE: (&str, u32, u32) = ("phone", 390, 844);

/// chromedriver on a free loopback port, killed on drop.
pub struct Driver {
    child: Child,
    base: String,
    /// chromedriver's own output, kept for the message when it fails.
    output: tempfile::NamedTempFile,
}

/// Starts of chromedriver tried before the test fails: a port picked free can be taken by another
/// process before chromedriver binds it, and chromedriver then exits at once.
const DRIVER_STARTS: usize = 3;

impl Driver {
    pub fn start() -> Driver {
        Driver::start_with_home(None)
    }

    /// With `home` as the browser's `$HOME`: its `.pki/nssdb` is the certificate store Chromium trusts.
    pub fn start_with_home(home: Option<&Path>) -> Driver {
        assert!(
            Path::new(CHROMEDRIVER).exists() && Path::new(CHROMIUM).exists(),
            "the browser tests need Debian's chromium and chromium-driver: run scripts/install-deps"
        );
        let mut said = Vec::new();
        for _ in 0..DRIVER_STARTS {
            match Driver::try_start(home) {
                Ok(driver) => return driver,
                Err(words) => said.push(words),
            }
        }
        panic!("chromedriver did not start {DRIVER_STARTS} times; it said: {said:#?}");
    }

    /// One start: ready, or chromedriver's output after it exited.
    fn try_start(home: Option<&Path>) -> Result<Driver, String> {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = tempfile::NamedTempFile::new().unwrap();
        let mut command = Command::new(CHROMEDRIVER);
        command
            .args([format!("--port={port}"), "--allowed-ips=127.0.0.1".into()])
            .stdout(log.reopen().unwrap())
            .stderr(log.reopen().unwrap());
        if let Some(home) = home {
            command.env("HOME", home);
        }
        let child = command.spawn().expect("chromedriver starts");
        let mut driver = Driver {
            child,
            base: format!("http://127.0.0.1:{port}"),
            output: log,
        };
        let exited = wait_for("chromedriver to answer or exit", || {
            if let Ok(Some(status)) = driver.child.try_wait() {
                return Some(Some(status));
            }
            let status = ureq::get(&format!("{}/status", driver.base)).call().ok()?;
            let status: Value = status.into_json().ok()?;
            (status["value"]["ready"] == true).then_some(None)
        });
        match exited {
            None => Ok(driver),
            Some(status) => Err(format!(
                "{status}: {}",
                std::fs::read_to_string(driver.output.path()).unwrap_or_default()
            )),
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One browser session.
pub struct Browser<'a> {
    driver: &'a Driver,
    session: String,
    _profile: tempfile::TempDir,
}

impl<'a> Browser<'a> {
    pub fn open(driver: &'a Driver) -> Browser<'a> {
        Browser::open_with(driver, &[])
    }

    /// A session with `extra` Chromium flags, recording the page's network events for
    /// [`Browser::requested_urls`].
    pub fn open_with(driver: &'a Driver, extra: &[String]) -> Browser<'a> {
        let profile = tempfile::tempdir().unwrap();
        let mut args = vec![
            "--headless".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-dev-shm-usage".into(),
            "--hide-scrollbars".into(),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        args.extend_from_slice(extra);
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
            "goog:loggingPrefs": {"performance": "ALL"},
            "timeouts": {"script": COMMAND_LIMIT.as_millis() as u64},
        }}});
        let answer: Value = ureq::post(&format!("{}/session", driver.base))
            .timeout(COMMAND_LIMIT)
            .send_json(capabilities)
            .expect("a Chromium session starts")
            .into_json()
            .unwrap();
        let session = answer["value"]["sessionId"].as_str().unwrap().to_string();
        Browser {
            driver,
            session,
            _profile: profile,
        }
    }

    pub fn command(&self, method: &str, path: &str, body: Value) -> Value {
        let url = format!("{}/session/{}{path}", self.driver.base, self.session);
        let request = ureq::request(method, &url).timeout(COMMAND_LIMIT);
        let answer = if method == "GET" {
            request.call()
        } else {
            request.send_json(body)
        };
        match answer {
            Ok(answer) => answer.into_json::<Value>().unwrap()["value"].take(),
            Err(ureq::Error::Status(code, answer)) => {
                panic!(
                    "WebDriver {method} {path}: {code} {}",
                    answer.into_string().unwrap()
                )
            }
            Err(err) => panic!("WebDriver {method} {path}: {err}"),
        }
    }

    pub fn go(&self, url: &str) {
        self.command("POST", "/url", json!({ "url": url }));
    }

    /// Makes the page's viewport `width`x`height` CSS pixels: the window is that much larger than its
    /// viewport.
    pub fn size(&self, width: u32, height: u32) {
        let resize = |w: i64, h: i64| {
            self.command("POST", "/window/rect", json!({"width": w, "height": h}));
        };
        let (width, height) = (i64::from(width), i64::from(height));
        resize(width, height);
        let inner = self.execute("return [window.innerWidth, window.innerHeight];", json!([]));
        let (inner_w, inner_h) = (inner[0].as_i64().unwrap(), inner[1].as_i64().unwrap());
        if (inner_w, inner_h) != (width, height) {
            resize(2 * width - inner_w, 2 * height - inner_h);
        }
    }

    pub fn source(&self) -> String {
        self.command("GET", "/source", Value::Null)
            .as_str()
            .unwrap()
            .to_string()
    }

    pub fn title(&self) -> String {
        self.command("GET", "/title", Value::Null)
            .as_str()
            .unwrap()
            .to_string()
    }

    pub fn find(&self, css: &str) -> String {
        let found = self.command(
            "POST",
            "/element",
            json!({"using": "css selector", "value": css}),
        );
        found[ELEMENT].as_str().unwrap().to_string()
    }

    pub fn type_into(&self, css: &str, text: &str) {
        let element = self.find(css);
        self.command(
            "POST",
            &format!("/element/{element}/value"),
            json!({ "text": text }),
        );
    }

    pub fn click(&self, css: &str) {
        let element = self.find(css);
        self.command("POST", &format!("/element/{element}/click"), json!({}));
    }

    /// Runs `script` (a function body) in the page and returns what it returns.
    pub fn execute(&self, script: &str, args: Value) -> Value {
        self.command(
            "POST",
            "/execute/sync",
            json!({"script": script, "args": args}),
        )
    }

    /// Runs `script` (a function body whose last argument is the callback) until it calls back.
    pub fn execute_async(&self, script: &str, args: Value) -> Value {
        self.command(
            "POST",
            "/execute/async",
            json!({"script": script, "args": args}),
        )
    }

    /// Waits until the page's source contains `needle`.
    pub fn wait_for_text(&self, needle: &str) -> String {
        wait_for(&format!("{needle:?} on the page"), || {
            let source = self.source();
            source.contains(needle).then_some(source)
        })
    }

    /// Every URL the pages of this session asked for since the last call (Chrome's performance log).
    pub fn requested_urls(&self) -> Vec<String> {
        let entries = self.command("POST", "/se/log", json!({"type": "performance"}));
        entries
            .as_array()
            .expect("a log")
            .iter()
            .filter_map(|entry| serde_json::from_str::<Value>(entry["message"].as_str()?).ok())
            .filter(|message| message["message"]["method"] == "Network.requestWillBeSent")
            .filter_map(|message| {
                Some(
                    message["message"]["params"]["request"]["url"]
                        .as_str()?
                        .to_string(),
                )
            })
            .collect()
    }

    /// Saves the window as `<dir>/<name>.png`.
    pub fn screenshot(&self, dir: &Path, name: &str) {
        let png = self.command("GET", "/screenshot", Value::Null);
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap())
            .unwrap();
        std::fs::write(dir.join(format!("{name}.png")), bytes).unwrap();
    }

    /// Screenshots of the current page at each of `sizes`, named `<name>-<label>`; the window ends
    /// at the first size.
    pub fn screenshots(&self, dir: &Path, name: &str, sizes: &[(&str, u32, u32)]) {
        for (label, width, height) in sizes {
            self.size(*width, *height);
            self.screenshot(dir, &format!("{name}-{label}"));
        }
        if let Some((_, width, height)) = sizes.first() {
            self.size(*width, *height);
        }
    }
}

impl Drop for Browser<'_> {
    fn drop(&mut self) {
        let url = format!("{}/session/{}", self.driver.base, self.session);
        let _ = ureq::delete(&url).call();
    }
}

/// `target/<name>/`, made if needed: where a browser test leaves its screenshots for review.
pub fn screenshot_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join(name);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

// ---------------------------------------------------------------------------------------------
// The kiosk page

/// The page's own key for its device token (`src/kiosk/page/kiosk.js`).
pub const KIOSK_TOKEN_KEY: &str = "facegate.kiosk.token";

/// Chromium flags for a tablet at the door: its camera plays the Y4M `clip`, it speaks `language`,
/// and it grants the camera without asking.
pub fn at_the_door(clip: &Path, language: &str) -> Vec<String> {
    vec![
        "--use-fake-ui-for-media-stream".into(),
        "--use-fake-device-for-media-stream".into(),
        format!("--use-file-for-fake-video-capture={}", clip.display()),
        format!("--lang={language}"),
        format!("--accept-lang={language}"),
    ]
}

/// Pairs the kiosk page at `base` as the tablet `name` the way an admin does: `facegate tablets add`
/// prints the one-time link, the tablet opens it. Returns once the page holds its token and the secret
/// has left the address bar.
pub fn pair_kiosk(browser: &Browser, daemon: &Daemon, base: &str, name: &str) {
    let added = daemon.setup().run(&["tablets", "add", name]);
    assert!(added.status.success(), "facegate tablets add: {added:?}");
    let secret = added
        .stdout
        .lines()
        .find_map(|line| Some(line.split_once("#pair=")?.1.trim().to_string()))
        .unwrap_or_else(|| panic!("no pairing link in {:?}", added.stdout));
    browser.go(&format!("{base}/kiosk/#pair={secret}"));
    let hash = wait_for("the page to trade the pairing secret for its token", || {
        let seen = browser.execute(
            "return [location.hash, localStorage.getItem(arguments[0])];",
            json!([KIOSK_TOKEN_KEY]),
        );
        seen[1].is_string().then(|| seen[0].clone())
    });
    assert_eq!(hash, "", "the secret must leave the address bar");
}

impl Browser<'_> {
    /// Waits (for an event in the page, not a fixed time) until the kiosk page's
    /// `document.body.dataset.state` is one of `states`; returns the state and the words on screen
    /// (`headline | detail`).
    pub fn wait_for_kiosk_state(&self, states: &[&str]) -> (String, String) {
        let seen = self.execute_async(
            r#"
            const [wanted, done] = [arguments[0], arguments[arguments.length - 1]];
            const now = () => [document.body.dataset.state,
                document.getElementById("headline").textContent + " | " +
                document.getElementById("detail").textContent];
            if (wanted.includes(document.body.dataset.state)) return done(now());
            const observer = new MutationObserver(() => {
                if (!wanted.includes(document.body.dataset.state)) return;
                observer.disconnect();
                done(now());
            });
            observer.observe(document.body, { attributes: true, attributeFilter: ["data-state"] });
            setTimeout(() => { observer.disconnect(); done(["gave up", now().join(" ")]); }, 60000);
            "#,
            json!(states),
        );
        let state = seen[0].as_str().unwrap().to_string();
        let words = seen[1].as_str().unwrap().to_string();
        assert!(
            states.contains(&state.as_str()),
            "the kiosk page never showed {states:?}; it shows {words:?}"
        );
        (state, words)
    }
}
