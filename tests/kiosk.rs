//! The kiosk page at the door, in a real headless Chromium (chromedriver) against the real daemon, with
//! Chromium's fake camera fed a Y4M clip made here from the test photos: an enrolled face opens the door
//! and is greeted by name, a stranger is denied and may type a visitor code, three wrong codes lock code
//! entry, a stopped daemon shows offline and the page recovers by itself, a revoked tablet shows it is
//! not paired, a Korean browser reads Korean, no request leaves the door, and the same grant works over
//! TLS with the door's certificate trusted through Chromium's NSS store. A screenshot of every state,
//! at tablet and phone size, goes to `target/kiosk-screenshots/` for review.

mod harness;
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use opencv::imgproc;
use opencv::prelude::*;
use serde_json::json;

use harness::chromium::{screenshot_dir, Browser, Driver, PHONE, TABLET};
use harness::{with_visitor_codes, Daemon, Setup, TOKEN};

/// The screen sizes every state is photographed at.
const SIZES: [(&str, u32, u32); 2] = [TABLET, PHONE];
/// A frame of the fake camera: what the page asks for.
const CAMERA: (i32, i32) = (1280, 720);
const ENROLLED_FACE: &str = harness::GRANTED_PHOTO;
const STRANGER_FACE: &str = harness::STRANGER_PHOTO;
const EMPTY_HALL: &str = "_noface/HDRtoneMapping_memorialSample.jpg";
/// Not one of the 12-digit codes `with_visitor_codes` makes (they never start with three zeros and
/// end the same way by chance in a test run).
const WRONG_CODE: &str = "000111000111";
/// The page's own key for its device token (kiosk.js).
const TOKEN_KEY: &str = "facegate.kiosk.token";

/// One browser test at a time: each runs a daemon and a Chromium, and the machine has two cores.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Writes a Y4M clip (YUV4MPEG2, 4:2:0) of `photo` letterboxed into a camera frame: what Chromium's
/// fake capture device plays, in a loop, as the front camera.
fn camera_clip(dir: &Path, photo: &str) -> PathBuf {
    let frame = support::letterbox(&support::photo_pixels(photo), CAMERA);
    let mut i420 = Mat::default();
    imgproc::cvt_color(&frame, &mut i420, imgproc::COLOR_BGR2YUV_I420, 0).expect("BGR to I420");
    let planes = i420.data_bytes().expect("a continuous I420 frame");
    let mut clip = format!(
        "YUV4MPEG2 W{} H{} F10:1 Ip A1:1 C420jpeg\n",
        CAMERA.0, CAMERA.1
    )
    .into_bytes();
    for _ in 0..2 {
        clip.extend_from_slice(b"FRAME\n");
        clip.extend_from_slice(planes);
    }
    let name = photo.replace(['/', '.'], "_");
    let path = dir.join(format!("{name}.y4m"));
    std::fs::write(&path, clip).expect("clip written");
    path
}

/// A Chromium whose front camera shows `clip`, speaking `language`.
fn kiosk_browser<'a>(driver: &'a Driver, clip: &Path, language: &str) -> Browser<'a> {
    Browser::open_with(
        driver,
        &[
            "--use-fake-ui-for-media-stream".into(),
            "--use-fake-device-for-media-stream".into(),
            format!("--use-file-for-fake-video-capture={}", clip.display()),
            format!("--lang={language}"),
            format!("--accept-lang={language}"),
        ],
    )
}

/// Gives the page its credential the way a tablet gets it.
fn pair(browser: &Browser, base: &str) {
    browser.go(&format!("{base}/kiosk/"));
    browser.execute(
        "localStorage.setItem(arguments[0], arguments[1]);",
        json!([TOKEN_KEY, TOKEN]),
    );
    browser.go(&format!("{base}/kiosk/"));
    browser.size(TABLET.1, TABLET.2);
}

/// Waits (for an event in the page, not a fixed time) until `document.body.dataset.state` is one of
/// `states`; returns the state and the words on screen.
fn wait_for_state(browser: &Browser, states: &[&str]) -> (String, String) {
    let seen = browser.execute_async(
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
    let (state, words) = (
        seen[0].as_str().unwrap().to_string(),
        seen[1].as_str().unwrap().to_string(),
    );
    assert!(
        states.contains(&state.as_str()),
        "the page never showed {states:?}; it shows {words:?}"
    );
    (state, words)
}

fn unlocks(daemon: &Daemon) -> usize {
    daemon.journal().iter().filter(|a| a.is_unlocked()).count()
}

fn type_code(browser: &Browser, code: &str) {
    for digit in code.chars() {
        browser.click(&format!("#keypad [data-digit=\"{digit}\"]"));
    }
}

/// What the browser has done so far: every request that could leave the machine (any scheme but
/// the browser's own `chrome:`, `data:` and `blob:`, e.g. its start page) went to the door's origin.
fn assert_only_the_door_was_asked(browser: &Browser, origin: &str) {
    let urls = browser.requested_urls();
    assert!(
        urls.iter().any(|url| url.ends_with("/image")),
        "no frame in the network log: {urls:?}"
    );
    let local = ["chrome:", "data:", "blob:"];
    let elsewhere: Vec<&String> = urls
        .iter()
        .filter(|url| !local.iter().any(|scheme| url.starts_with(scheme)))
        .filter(|url| !url.starts_with(&format!("{origin}/")))
        .collect();
    assert!(
        elsewhere.is_empty(),
        "the page asked beyond the door: {elsewhere:?}"
    );
}

#[test]
fn the_kiosk_page_opens_for_faces_and_codes_and_recovers_from_a_lost_door() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let clips = tempfile::tempdir().unwrap();
    let (setup, codes) = with_visitor_codes(Setup::new());
    let mut daemon = setup.serve();
    let driver = Driver::start();
    let shots = screenshot_dir("kiosk-screenshots");
    let base = format!("http://{}", daemon.addr);

    // An empty hall: the page stays idle and keeps asking, slowly.
    {
        let browser = kiosk_browser(&driver, &camera_clip(clips.path(), EMPTY_HALL), "en-US");
        pair(&browser, &base);
        harness::wait_for("the page's frames of the empty hall", || {
            let seen = harness::audit_lines(&daemon)
                .iter()
                .filter(|line| line["status"] == "no_face")
                .count();
            (seen >= 3).then_some(())
        });
        let (_, words) = wait_for_state(&browser, &["idle"]);
        assert!(words.starts_with("Look at the camera"), "{words}");
        browser.screenshots(&shots, "1-idle", &SIZES);
        assert_only_the_door_was_asked(&browser, &base);
    }

    // An enrolled face: the door opens and the page greets them by name.
    {
        let browser = kiosk_browser(&driver, &camera_clip(clips.path(), ENROLLED_FACE), "en-US");
        pair(&browser, &base);
        let (_, words) = wait_for_state(&browser, &["granted"]);
        assert_eq!(words, "Welcome, obama | Door open");
        daemon.wait_for_journal("the door to unlock", |j| j.iter().any(|a| a.is_unlocked()));
        browser.screenshots(&shots, "2-granted", &SIZES);
    }
    daemon.wait_for_journal("the door to lock again", |j| {
        j.last().is_some_and(|a| !a.is_unlocked())
    });
    let opened_by_face = unlocks(&daemon);

    // A stranger: denied, the door stays shut; a visitor code typed on the page opens it.
    let browser = kiosk_browser(&driver, &camera_clip(clips.path(), STRANGER_FACE), "en-US");
    pair(&browser, &base);
    let (_, words) = wait_for_state(&browser, &["denied"]);
    assert!(words.starts_with("Not recognised"), "{words}");
    browser.screenshots(&shots, "3-denied", &SIZES);
    assert_eq!(unlocks(&daemon), opened_by_face, "a stranger never opens");

    browser.click("#open-keypad");
    wait_for_state(&browser, &["code"]);
    type_code(&browser, &codes[0][..4]);
    browser.screenshots(&shots, "4-code", &SIZES);
    type_code(&browser, &codes[0][4..]);
    browser.click("#submit-code");
    let (_, words) = wait_for_state(&browser, &["granted"]);
    assert_eq!(words, "Welcome | Door open");
    daemon.wait_for_journal("the code to open the door", |j| {
        j.iter().filter(|a| a.is_unlocked()).count() > opened_by_face
    });
    let opened = unlocks(&daemon);

    // Three wrong codes: entry locks, with a countdown, and the door never moves.
    wait_for_state(&browser, &["denied"]);
    browser.click("#open-keypad");
    wait_for_state(&browser, &["code"]);
    for left in ["2", "1"] {
        type_code(&browser, WRONG_CODE);
        browser.click("#submit-code");
        browser.wait_for_text(&format!("Attempts left: {left}"));
    }
    type_code(&browser, WRONG_CODE);
    browser.click("#submit-code");
    let (_, words) = wait_for_state(&browser, &["locked_out"]);
    assert!(
        words.starts_with("Code entry locked | Too many wrong codes. Try again in "),
        "{words}"
    );
    browser.screenshots(&shots, "5-locked_out", &SIZES);
    assert_eq!(unlocks(&daemon), opened, "wrong codes never open");

    // The door goes away: the page says so, and comes back by itself when the door does.
    daemon.terminate();
    let (_, words) = wait_for_state(&browser, &["offline"]);
    assert_eq!(words, "No connection to the door | Trying again by itself…");
    browser.screenshots(&shots, "6-offline", &SIZES);
    daemon.start_again();
    wait_for_state(&browser, &["denied", "locked_out", "idle"]);
    assert_only_the_door_was_asked(&browser, &base);

    // A tablet whose credential the door no longer takes says it is not paired.
    browser.execute(
        "localStorage.setItem(arguments[0], 'no-longer-valid'); location.reload();",
        json!([TOKEN_KEY]),
    );
    let (_, words) = wait_for_state(&browser, &["unpaired"]);
    assert_eq!(
        words,
        "This tablet is not paired | Ask the building admin for a pairing link"
    );
    browser.screenshots(&shots, "7-unpaired", &SIZES);
    eprintln!("kiosk screenshots in {}", shots.display());
}

#[test]
fn a_korean_tablet_over_tls_trusts_the_doors_certificate_and_reads_korean() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let clips = tempfile::tempdir().unwrap();
    let daemon = Setup::new().set("http.tls.enabled", true).serve();
    let home = tempfile::tempdir().unwrap();
    trust_in_nss(home.path(), &daemon.state_dir().join("tls/cert.pem"));
    let driver = Driver::start_with_home(Some(home.path()));
    let base = format!("https://localhost:{}", daemon.addr.port());
    let browser = kiosk_browser(&driver, &camera_clip(clips.path(), ENROLLED_FACE), "ko-KR");
    pair(&browser, &base);
    let (_, words) = wait_for_state(&browser, &["granted"]);
    assert_eq!(words, "obama님, 환영합니다 | 문이 열렸습니다");
    daemon.wait_for_journal("the door to unlock", |j| j.iter().any(|a| a.is_unlocked()));
    browser.screenshots(
        &screenshot_dir("kiosk-screenshots"),
        "8-granted-ko-tls",
        &SIZES,
    );
    assert_only_the_door_was_asked(&browser, &base);
}

/// Makes `home/.pki/nssdb`, the store Chromium on Linux reads, and trusts `cert` there as a server
/// certificate, with `certutil` (libnss3-tools), as an admin would on a desktop.
fn trust_in_nss(home: &Path, cert: &Path) {
    let db = home.join(".pki/nssdb");
    std::fs::create_dir_all(&db).unwrap();
    let db = format!("sql:{}", db.display());
    let certutil = |args: &[&str]| {
        let out = Command::new("certutil")
            .args(args)
            .output()
            .expect("certutil runs: install libnss3-tools (scripts/install-deps)");
        assert!(out.status.success(), "certutil {args:?}: {out:?}");
    };
    certutil(&["-N", "-d", &db, "--empty-password"]);
    certutil(&[
        "-A",
        "-d",
        &db,
        "-n",
        "facegate door",
        "-t",
        "P,,",
        "-i",
        cert.to_str().unwrap(),
    ]);
}
