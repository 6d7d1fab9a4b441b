//! The kiosk page at the door, in a real headless Chromium (chromedriver) against the real daemon, with
//! Chromium's fake camera fed a Y4M clip made here from the test photos: an enrolled face opens the door
//! and is greeted by name, a stranger is denied and may type a visitor code, three wrong codes lock code
//! entry, a stopped daemon shows offline and the page recovers by itself, a revoked tablet shows it is
//! not paired, a face still being confirmed is asked to hold still, a Korean browser reads Korean, no
//! request leaves the door, and the same grant works over TLS with the door's certificate trusted
//! through Chromium's NSS store. A screenshot of every state, at tablet and phone size, goes to
//! `target/kiosk-screenshots/` for review.

mod harness;
mod support;

use std::path::Path;
use std::process::Command;
use std::sync::Mutex;

use opencv::core::Mat;
use opencv::prelude::*;

use harness::chromium::{at_the_door, pair_kiosk, screenshot_dir, Browser, Driver, PHONE, TABLET};
use harness::{with_visitor_codes, Daemon, Setup};

/// The screen sizes every state is photographed at.
const SIZES: [(&str, u32, u32); 2] = [TABLET, PHONE];
/// A frame of the fake camera: what the page asks for.
const CAMERA: (i32, i32) = (1280, 720);
const ENROLLED_FACE: &str = harness::GRANTED_PHOTO;
const STRANGER_FACE: &str = harness::STRANGER_PHOTO;
/// A printed photo held up to the camera (enrolled in the liveness test: the attacker's best case).
const PRINTED_FACE: &str = "_liveness/spoof_image_F1.jpg";
const EMPTY_HALL: &str = "_noface/HDRtoneMapping_memorialSample.jpg";
/// Not one of the 12-digit codes `with_visitor_codes` makes (one in a trillion by chance).
const WRONG_CODE: &str = "000111000111";

/// One browser test at a time: each runs a daemon and a Chromium, and the machine has two cores.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// A daemon under test and what its kiosks need: the base URL, a place for camera clips.
struct Door {
    daemon: Daemon,
    base: String,
    clips: tempfile::TempDir,
}

impl Door {
    fn new(daemon: Daemon, scheme_and_host: &str) -> Door {
        Door {
            base: format!("{scheme_and_host}:{}", daemon.addr.port()),
            daemon,
            clips: tempfile::tempdir().unwrap(),
        }
    }

    /// A Chromium at the door, its camera showing `view`, paired as the tablet `name`, its viewport
    /// tablet-sized.
    fn kiosk<'a>(&self, driver: &'a Driver, name: &str, view: &Mat, language: &str) -> Browser<'a> {
        let clip = support::camera_clip(self.clips.path(), name, view);
        let browser = Browser::open_with(driver, &at_the_door(&clip, language));
        pair_kiosk(&browser, &self.daemon, &self.base, name);
        browser.size(TABLET.1, TABLET.2);
        browser
    }

    fn unlocks(&self) -> usize {
        self.daemon
            .journal()
            .iter()
            .filter(|a| a.is_unlocked())
            .count()
    }
}

/// `photo` as the door camera sees it.
fn seeing(photo: &str) -> Mat {
    support::door_view(photo, CAMERA)
}

/// Waits for the page to show `state`, photographs it as `shot` at every size, and returns its words.
fn shows(browser: &Browser, state: &str, shot: &str) -> String {
    let (_, words) = browser.wait_for_kiosk_state(&[state]);
    browser.screenshots(&screenshot_dir("kiosk-screenshots"), shot, &SIZES);
    words
}

fn type_code(browser: &Browser, code: &str) {
    for digit in code.chars() {
        browser.click(&format!("#keypad [data-digit=\"{digit}\"]"));
    }
}

fn submit_code(browser: &Browser, code: &str) {
    type_code(browser, code);
    browser.click("#submit-code");
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
    let (setup, codes) = with_visitor_codes(Setup::new());
    let mut door = Door::new(setup.serve(), "http://127.0.0.1");
    let driver = Driver::start();

    // An empty hall: the page stays idle and keeps asking, slowly.
    {
        let browser = door.kiosk(&driver, "hall", &seeing(EMPTY_HALL), "en-US");
        harness::wait_for("the page's frames of the empty hall", || {
            let audit = harness::audit_lines(&door.daemon);
            let seen = audit.iter().filter(|l| l["status"] == "no_face").count();
            (seen >= 3).then_some(())
        });
        let words = shows(&browser, "idle", "1-idle");
        assert_eq!(
            words,
            "Look at the camera | Stand still in front of the tablet"
        );
        assert_only_the_door_was_asked(&browser, &door.base);
    }

    // An enrolled face: the door opens and the page greets them by name.
    {
        let browser = door.kiosk(&driver, "front", &seeing(ENROLLED_FACE), "en-US");
        assert_eq!(
            shows(&browser, "granted", "2-granted"),
            "Welcome, obama | Door open"
        );
        door.daemon
            .wait_for_journal("the door to unlock", |j| j.iter().any(|a| a.is_unlocked()));
        let grant = harness::wait_for("the grant's audit line", || {
            let audit = harness::audit_lines(&door.daemon);
            audit.into_iter().find(|line| line["status"] == "granted")
        });
        assert_eq!(
            grant["tablet"], "front",
            "the decision names the tablet: {grant}"
        );
    }
    door.daemon.wait_for_journal("the door to lock again", |j| {
        j.last().is_some_and(|a| !a.is_unlocked())
    });
    let opened_by_face = door.unlocks();

    // A stranger: denied, the door stays shut; a visitor code typed on the page opens it.
    let browser = door.kiosk(&driver, "lobby", &seeing(STRANGER_FACE), "en-US");
    let words = shows(&browser, "denied", "3-denied");
    assert!(words.starts_with("Not recognised | "), "{words}");
    assert_eq!(door.unlocks(), opened_by_face, "a stranger never opens");
    browser.click("#open-keypad");
    browser.wait_for_kiosk_state(&["code"]);
    type_code(&browser, &codes[0][..4]);
    shows(&browser, "code", "4-code");
    submit_code(&browser, &codes[0][4..]);
    let (_, words) = browser.wait_for_kiosk_state(&["granted"]);
    assert_eq!(words, "Welcome | Door open");
    door.daemon
        .wait_for_journal("the code to open the door", |j| {
            j.iter().filter(|a| a.is_unlocked()).count() > opened_by_face
        });
    let opened = door.unlocks();

    // Three wrong codes: entry locks, with a countdown, and the door never moves.
    browser.wait_for_kiosk_state(&["denied"]);
    browser.click("#open-keypad");
    browser.wait_for_kiosk_state(&["code"]);
    for left in ["2", "1"] {
        submit_code(&browser, WRONG_CODE);
        browser.wait_for_text(&format!("Attempts left: {left}"));
    }
    submit_code(&browser, WRONG_CODE);
    let words = shows(&browser, "locked_out", "5-locked_out");
    assert!(
        words.starts_with("Code entry locked | Too many wrong codes. Try again in "),
        "{words}"
    );
    assert_eq!(door.unlocks(), opened, "wrong codes never open");

    // The door goes away: the page says so, and comes back by itself when the door does.
    door.daemon.terminate();
    let words = shows(&browser, "offline", "6-offline");
    assert_eq!(words, "No connection to the door | Trying again by itself…");
    door.daemon.start_again();
    browser.wait_for_kiosk_state(&["denied", "locked_out", "idle"]);
    assert_only_the_door_was_asked(&browser, &door.base);

    // A revoked tablet says it is not paired, at once.
    let revoked = door.daemon.setup().run(&["tablets", "revoke", "lobby"]);
    assert!(revoked.status.success(), "{revoked:?}");
    assert_eq!(
        shows(&browser, "unpaired", "7-unpaired"),
        "This tablet is not paired | Ask the building admin for a pairing link"
    );
}

#[test]
fn a_korean_tablet_over_tls_trusts_the_doors_certificate_and_reads_korean() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let door = Door::new(
        Setup::new().set("http.tls.enabled", true).serve(),
        "https://localhost",
    );
    // What the admin installs on the tablet: the PEM `facegate tls cert` prints.
    let printed = door.daemon.setup().run(&["tls", "cert"]);
    assert!(printed.status.success(), "facegate tls cert: {printed:?}");
    let home = tempfile::tempdir().unwrap();
    let pem = home.path().join("door.pem");
    std::fs::write(&pem, &printed.stdout).unwrap();
    trust_in_nss(home.path(), &pem);
    let driver = Driver::start_with_home(Some(home.path()));
    let browser = door.kiosk(&driver, "front", &seeing(ENROLLED_FACE), "ko-KR");
    assert_eq!(
        shows(&browser, "granted", "8-granted-ko-tls"),
        "obama님, 환영합니다 | 문이 열렸습니다"
    );
    door.daemon
        .wait_for_journal("the door to unlock", |j| j.iter().any(|a| a.is_unlocked()));
    assert_only_the_door_was_asked(&browser, &door.base);
}

#[test]
fn liveness_verdicts_read_as_come_closer_and_not_accepted() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // A face narrower than 130 px is too small to judge: the print held up close is wider, the
    // enrolled face a few steps back is not.
    let setup = Setup::new()
        .set("liveness.enabled", true)
        .set("liveness.min_face_px", 130);
    let print = harness::assets_dir().join("faces").join(PRINTED_FACE);
    let enrolled = setup.run(&["enroll", "--name", "printed", print.to_str().unwrap()]);
    assert!(enrolled.status.success(), "{enrolled:?}");
    let door = Door::new(setup.serve(), "http://127.0.0.1");
    let driver = Driver::start();
    {
        let browser = door.kiosk(&driver, "print", &close_up(PRINTED_FACE), "en-US");
        assert_eq!(
            shows(&browser, "spoof", "9-spoof"),
            "Not accepted | Please face the camera yourself and try again"
        );
    }
    let browser = door.kiosk(&driver, "far", &far_away(ENROLLED_FACE), "en-US");
    assert_eq!(
        shows(&browser, "too_far", "10-too_far"),
        "Come closer | Your face is too far from the camera"
    );
    assert_eq!(
        door.unlocks(),
        0,
        "neither a print nor a face too small to judge opens"
    );
}

/// Regression: a face still being confirmed (`door.confirm_frames`) was greeted by name over "The door
/// stays locked: please ask for help", as if it had been refused.
#[test]
fn a_face_still_being_confirmed_reads_hold_still_and_is_not_welcomed() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // A window of 1 ms lets no two frames count together: the face stays unconfirmed for ever.
    let setup = Setup::new()
        .set("door.confirm_frames", 10)
        .set("door.confirm_window_ms", 1);
    let door = Door::new(setup.serve(), "http://127.0.0.1");
    let driver = Driver::start();
    let browser = door.kiosk(&driver, "front", &seeing(ENROLLED_FACE), "en-US");
    assert_eq!(
        shows(&browser, "confirming", "11-confirming"),
        "Hold still | Checking it is you…"
    );
    harness::wait_for("three frames answered confirming", || {
        let audit = harness::audit_lines(&door.daemon);
        let confirming = audit.iter().filter(|l| l["door"] == "confirming").count();
        (confirming >= 3).then_some(())
    });
    let (state, words) = browser.wait_for_kiosk_state(&["confirming"]);
    assert_eq!(
        (state.as_str(), words.as_str()),
        ("confirming", "Hold still | Checking it is you…")
    );
    assert_eq!(door.unlocks(), 0, "an unconfirmed face never opens");
}

/// `photo` held up close to the camera: the middle two thirds of the door's view, filling the frame.
fn close_up(photo: &str) -> Mat {
    let large = support::door_view(photo, (CAMERA.0 * 3 / 2, CAMERA.1 * 3 / 2));
    let middle = opencv::core::Rect::new(CAMERA.0 / 4, CAMERA.1 / 4, CAMERA.0, CAMERA.1);
    large
        .roi(middle)
        .expect("the middle")
        .try_clone()
        .expect("a copy")
}

/// `photo` a few steps back from the camera: half the frame's height, in a dark hall.
fn far_away(photo: &str) -> Mat {
    let small = support::door_view(photo, (CAMERA.0 / 2, CAMERA.1 / 2));
    let (across, down) = ((CAMERA.0 - small.cols()) / 2, (CAMERA.1 - small.rows()) / 2);
    let mut view = Mat::default();
    opencv::core::copy_make_border(
        &small,
        &mut view,
        down,
        CAMERA.1 - small.rows() - down,
        across,
        CAMERA.0 - small.cols() - across,
        opencv::core::BORDER_CONSTANT,
        opencv::core::Scalar::all(0.0),
    )
    .expect("pad");
    view
}

/// Makes `home/.pki/nssdb`, the store Chromium on Linux reads, and trusts the door's certificate
/// `cert` there to vouch for the door's server certificate, with `certutil` (libnss3-tools), as an
/// admin would on a desktop.
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
        "C,,",
        "-i",
        cert.to_str().unwrap(),
    ]);
}
