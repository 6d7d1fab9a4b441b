//! The admin pages in a real headless Chromium, driven over the WebDriver protocol (chromedriver,
//! plain HTTP on loopback): sign in, enrol a person by uploading a photo, see the person and their
//! next decision appear, pulse the door. A screenshot of every page, at laptop and phone sizes, goes
//! to `target/admin-screenshots/` for review.

mod harness;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};

use harness::{assets_dir, photo, wait_for, Daemon, Setup, STRANGER_PHOTO};

const PASSWORD: &str = "door-admin-secret";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";
/// WebDriver's key for "the element" in its JSON.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// chromedriver on a free loopback port, killed on drop.
struct Driver {
    child: Child,
    base: String,
}

impl Driver {
    fn start() -> Driver {
        assert!(
            Path::new(CHROMEDRIVER).exists() && Path::new(CHROMIUM).exists(),
            "the browser test needs Debian's chromium and chromium-driver: run scripts/install-deps"
        );
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(CHROMEDRIVER)
            .args([format!("--port={port}"), "--allowed-ips=127.0.0.1".into()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let driver = Driver {
            child,
            base: format!("http://127.0.0.1:{port}"),
        };
        wait_for("chromedriver to answer", || {
            let status = ureq::get(&format!("{}/status", driver.base)).call().ok()?;
            let status: Value = status.into_json().ok()?;
            (status["value"]["ready"] == true).then_some(())
        });
        driver
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One browser session: the few WebDriver commands the test needs.
struct Browser<'a> {
    driver: &'a Driver,
    session: String,
    _profile: tempfile::TempDir,
}

impl<'a> Browser<'a> {
    fn open(driver: &'a Driver) -> Browser<'a> {
        let profile = tempfile::tempdir().unwrap();
        let args = [
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
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
        }}});
        let answer: Value = ureq::post(&format!("{}/session", driver.base))
            .timeout(Duration::from_secs(60))
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

    fn command(&self, method: &str, path: &str, body: Value) -> Value {
        let url = format!("{}/session/{}{path}", self.driver.base, self.session);
        let request = ureq::request(method, &url).timeout(Duration::from_secs(60));
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

    fn go(&self, url: &str) {
        self.command("POST", "/url", json!({ "url": url }));
    }

    fn size(&self, width: u32, height: u32) {
        self.command(
            "POST",
            "/window/rect",
            json!({"width": width, "height": height}),
        );
    }

    fn source(&self) -> String {
        self.command("GET", "/source", Value::Null)
            .as_str()
            .unwrap()
            .to_string()
    }

    fn title(&self) -> String {
        self.command("GET", "/title", Value::Null)
            .as_str()
            .unwrap()
            .to_string()
    }

    fn find(&self, css: &str) -> String {
        let found = self.command(
            "POST",
            "/element",
            json!({"using": "css selector", "value": css}),
        );
        found[ELEMENT].as_str().unwrap().to_string()
    }

    fn type_into(&self, css: &str, text: &str) {
        let element = self.find(css);
        self.command(
            "POST",
            &format!("/element/{element}/value"),
            json!({ "text": text }),
        );
    }

    fn click(&self, css: &str) {
        let element = self.find(css);
        self.command("POST", &format!("/element/{element}/click"), json!({}));
    }

    /// Waits until the page's source contains `needle`.
    fn wait_for_text(&self, needle: &str) -> String {
        wait_for(&format!("{needle:?} on the page"), || {
            let source = self.source();
            source.contains(needle).then_some(source)
        })
    }

    /// Saves the page as `<dir>/<name>.png`, full height of the content.
    fn screenshot(&self, dir: &Path, name: &str) {
        let png = self.command("GET", "/screenshot", Value::Null);
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap())
            .unwrap();
        std::fs::write(dir.join(format!("{name}.png")), bytes).unwrap();
    }

    /// Laptop and phone screenshots of the current page.
    fn screenshots(&self, dir: &Path, name: &str) {
        self.size(1280, 900);
        self.screenshot(dir, &format!("{name}-laptop"));
        self.size(390, 844);
        self.screenshot(dir, &format!("{name}-phone"));
        self.size(1280, 900);
    }
}

impl Drop for Browser<'_> {
    fn drop(&mut self) {
        let url = format!("{}/session/{}", self.driver.base, self.session);
        let _ = ureq::delete(&url).call();
    }
}

fn screenshot_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("admin-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn tablet_frame(daemon: &Daemon, image: &[u8]) -> Value {
    let body = json!({ "image": base64::engine::general_purpose::STANDARD.encode(image) });
    let reply = daemon.post("/image", body.to_string().as_bytes());
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.json()
}

#[test]
fn an_admin_enrols_a_person_in_chromium_and_sees_their_decision() {
    let setup = Setup::new();
    setup.write_config();
    let state = setup.state_dir();
    facegate::admin::password::store(&state, PASSWORD).unwrap();
    let daemon = setup.serve();
    let stranger = tablet_frame(&daemon, &photo(STRANGER_PHOTO));
    let stranger_id = stranger["request_id"].as_str().unwrap().to_string();
    let driver = Driver::start();
    let browser = Browser::open(&driver);
    let shots = screenshot_dir();
    let base = format!("http://{}", daemon.addr);
    let started = Instant::now();

    browser.go(&format!("{base}/admin/"));
    browser.wait_for_text("Admin password");
    browser.screenshots(&shots, "1-login");
    browser.type_into("#password", PASSWORD);
    browser.click("form button[type=submit]");
    browser.wait_for_text("Last decisions");
    assert!(browser.title().starts_with("Dashboard"));

    browser.go(&format!("{base}/admin/people"));
    browser.type_into("#name", "rose");
    let upload = assets_dir().join("faces/rose_leslie/img1.jpg");
    browser.type_into("#photos", upload.to_str().unwrap());
    browser.click("form.stack button[type=submit]");
    let page = browser.wait_for_text("Enrolled rose: 1 of 1 photos accepted");
    assert!(page.contains("data-person=\"rose\""));
    browser.screenshots(&shots, "3-people");

    let granted = wait_for("the daemon to recognise rose", || {
        let answer = tablet_frame(&daemon, &photo("rose_leslie/img2.jpg"));
        (answer["identity"] == "rose").then_some(answer)
    });
    let granted_id = granted["request_id"].as_str().unwrap().to_string();
    browser.go(&format!("{base}/admin/"));
    let dashboard = wait_for("rose's decision on the dashboard", || {
        browser.go(&format!("{base}/admin/"));
        let source = browser.source();
        source.contains(&granted_id).then_some(source)
    });
    assert!(dashboard.contains(">rose<"));
    browser.screenshots(&shots, "2-dashboard");

    browser.go(&format!("{base}/admin/events"));
    browser.wait_for_text(&stranger_id);
    browser.screenshots(&shots, "4-events");
    browser.go(&format!("{base}/admin/events/{stranger_id}"));
    browser.wait_for_text("Sidecar JSON");
    browser.screenshots(&shots, "5-snapshot");

    // The grant above holds the door open for 2 s: pulse once it has locked again.
    wait_for("the door to lock again", || {
        browser.go(&format!("{base}/admin/door"));
        browser
            .source()
            .contains("class=\"door-locked\"")
            .then_some(())
    });
    browser.command(
        "POST",
        "/execute/sync",
        json!({"script": "window.confirm = () => true;", "args": []}),
    );
    browser.click("form[action='/admin/door/pulse'] button");
    browser.wait_for_text("the door is unlocked for the hold time");
    browser.screenshots(&shots, "6-door");

    browser.go(&format!("{base}/admin/codes"));
    browser.command(
        "POST",
        "/execute/sync",
        json!({"script": "window.confirm = () => true;", "args": []}),
    );
    browser.click("form[action='/admin/codes/generate'] button");
    browser.wait_for_text("Generated 3 daily codes");
    browser.screenshots(&shots, "7-codes");

    browser.click(".logout button");
    browser.wait_for_text("Admin password");
    eprintln!(
        "browser test took {:.1} s; screenshots in {}",
        started.elapsed().as_secs_f64(),
        shots.display()
    );
}
