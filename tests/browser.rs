//! The admin pages in a real headless Chromium, driven over the WebDriver protocol (chromedriver,
//! plain HTTP on loopback): sign in, enrol a person by uploading a photo, see the person and their
//! next decision appear, pulse the door. A screenshot of every page, at laptop and phone sizes, goes
//! to `target/admin-screenshots/` for review.

mod harness;

use std::time::Instant;

use base64::Engine as _;
use serde_json::{json, Value};

use harness::chromium::{screenshot_dir, Browser, Driver, LAPTOP, PHONE};
use harness::{assets_dir, photo, wait_for, Daemon, Setup, STRANGER_PHOTO};

const PASSWORD: &str = "door-admin-secret";
/// Laptop and phone: the sizes an admin uses.
const SIZES: [(&str, u32, u32); 2] = [LAPTOP, PHONE];

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
    let shots = screenshot_dir("admin-screenshots");
    let base = format!("http://{}", daemon.addr);
    let started = Instant::now();

    browser.go(&format!("{base}/admin/"));
    browser.wait_for_text("Admin password");
    browser.screenshots(&shots, "1-login", &SIZES);
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
    browser.screenshots(&shots, "3-people", &SIZES);

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
    browser.screenshots(&shots, "2-dashboard", &SIZES);

    browser.go(&format!("{base}/admin/events"));
    browser.wait_for_text(&stranger_id);
    browser.screenshots(&shots, "4-events", &SIZES);
    browser.go(&format!("{base}/admin/events/{stranger_id}"));
    browser.wait_for_text("Sidecar JSON");
    browser.screenshots(&shots, "5-snapshot", &SIZES);

    // The grant above holds the door open for 2 s: pulse once it has locked again.
    wait_for("the door to lock again", || {
        browser.go(&format!("{base}/admin/door"));
        browser
            .source()
            .contains("class=\"door-locked\"")
            .then_some(())
    });
    browser.execute("window.confirm = () => true;", json!([]));
    browser.click("form[action='/admin/door/pulse'] button");
    browser.wait_for_text("the door is unlocked for the hold time");
    browser.screenshots(&shots, "6-door", &SIZES);

    browser.go(&format!("{base}/admin/codes"));
    browser.execute("window.confirm = () => true;", json!([]));
    browser.click("form[action='/admin/codes/generate'] button");
    browser.wait_for_text("Generated 3 daily codes");
    browser.screenshots(&shots, "7-codes", &SIZES);

    browser.click(".logout button");
    browser.wait_for_text("Admin password");
    eprintln!(
        "browser test took {:.1} s; screenshots in {}",
        started.elapsed().as_secs_f64(),
        shots.display()
    );
}
