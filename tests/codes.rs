//! Visitor codes end to end: the `facegate codes` commands on a real state dir, and `POST /code` on the
//! real daemon over loopback with the sim door journaling to a file.

mod harness;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use base64::Engine as _;
use serde_json::{json, Value};

use harness::{
    audit_lines, bearer, photo, run_facegate, wait_for_audit, wait_for_snapshot,
    with_visitor_codes, Daemon, Finished, Reply, Setup, GRANTED_PHOTO, STRANGER_PHOTO,
};

/// Runs `facegate codes ...` with a config whose week has a holiday on Christmas.
fn codes(dir: &Path, args: &[&str]) -> Finished {
    let config = dir.join("facegate.toml");
    let state = dir.join("state");
    std::fs::write(
        &config,
        format!(
            "state_dir = {:?}\n[codes]\nholidays = [2026-12-25]\n",
            state.to_str().unwrap()
        ),
    )
    .unwrap();
    let mut full = vec!["--config", config.to_str().unwrap(), "codes"];
    full.extend_from_slice(args);
    run_facegate(&full, dir)
}

fn shown(dir: &Path, date: &str) -> Value {
    let finished = codes(dir, &["show", "--date", date, "--json"]);
    assert!(finished.status.success(), "{finished:?}");
    serde_json::from_str(&finished.stdout).unwrap_or_else(|err| panic!("{err}: {finished:?}"))
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("{value} is not an array"))
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn generate_show_replace_and_revoke_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let generated = codes(
        dir,
        &[
            "generate",
            "--from",
            "2026-12-21",
            "--to",
            "2027-01-08",
            "--daily",
            "3",
            "--weekly",
            "2",
        ],
    );
    assert!(generated.status.success(), "{generated:?}");
    assert!(
        generated.stdout.contains("14 working days") && !generated.stdout.contains("replaced"),
        "{generated:?}"
    );
    let path = dir.join("state").join("codes.json");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the codes file must be private");

    let thursday = shown(dir, "2026-12-31");
    assert_eq!(thursday["date"], "2026-12-31");
    let daily = strings(&thursday["daily"]);
    let weekly = strings(&thursday["weekly"]);
    assert_eq!((daily.len(), weekly.len()), (3, 2), "{thursday}");
    for code in daily.iter().chain(&weekly) {
        assert!(code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit()));
    }
    // Friday 2027-01-01 is in the same ISO week (2026-W53): same weekly codes, other daily ones.
    let friday = shown(dir, "2027-01-01");
    assert_eq!(strings(&friday["weekly"]), weekly);
    assert_ne!(strings(&friday["daily"]), daily);
    for closed in ["2026-12-25", "2026-12-26", "2027-01-10"] {
        let day = shown(dir, closed);
        assert_eq!(
            (strings(&day["daily"]).len(), strings(&day["weekly"]).len()),
            (0, 0),
            "{closed}: {day}"
        );
    }
    let text = codes(dir, &["show", "--date", "2026-12-25"]);
    assert!(text.stdout.contains("holiday"), "{text:?}");

    let again = codes(
        dir,
        &["generate", "--from", "2026-12-31", "--to", "2026-12-31"],
    );
    assert!(again.status.success(), "{again:?}");
    assert!(
        again
            .stdout
            .contains("replaced the daily codes of 2026-12-31")
            && again
                .stdout
                .contains("replaced the weekly codes of 2026-W53"),
        "{again:?}"
    );
    let replaced = shown(dir, "2026-12-31");
    assert_ne!(strings(&replaced["daily"]), daily);

    let victim = strings(&replaced["daily"])[0].clone();
    let revoked = codes(dir, &["revoke", &victim]);
    assert!(
        revoked.status.success() && revoked.stdout.contains("daily 2026-12-31"),
        "{revoked:?}"
    );
    assert!(!strings(&shown(dir, "2026-12-31")["daily"]).contains(&victim));
    let unknown = codes(dir, &["revoke", &victim]);
    assert!(
        !unknown.status.success() && unknown.stderr.contains("no stored code"),
        "{unknown:?}"
    );
    let backwards = codes(
        dir,
        &["generate", "--from", "2027-01-02", "--to", "2027-01-01"],
    );
    assert!(
        !backwards.status.success() && backwards.stderr.contains("before"),
        "{backwards:?}"
    );
}

#[test]
fn show_defaults_to_today_in_local_time() {
    let dir = tempfile::tempdir().unwrap();
    let today = chrono::Local::now().date_naive();
    let finished = codes(dir.path(), &["show", "--json"]);
    assert!(finished.status.success(), "{finished:?}");
    let answer: Value = serde_json::from_str(&finished.stdout).unwrap();
    // Around midnight the command may have run on the next day.
    let tomorrow = today.succ_opt().unwrap();
    assert!(
        [today.to_string(), tomorrow.to_string()]
            .contains(&answer["date"].as_str().unwrap().into()),
        "{answer}"
    );
}

// ---------------------------------------------------------------------------------------------
// POST /code on the real daemon

/// A daemon with visitor codes valid today (see `harness::with_visitor_codes`).
fn daemon_with_codes(setup: Setup) -> (Daemon, Vec<String>) {
    let (setup, codes) = with_visitor_codes(setup);
    (setup.serve(), codes)
}

/// POSTs from a chosen loopback source address (127.0.0.2 is a second tablet).
fn post_from(daemon: &Daemon, source: &str, path: &str, body: &[u8]) -> Reply {
    let auth = bearer();
    let headers = [
        ("Authorization", auth.as_str()),
        ("Content-Type", "application/json"),
    ];
    daemon.send_from(source.parse().unwrap(), "POST", path, &headers, body)
}

fn code_body(code: &str, image: Option<&[u8]>) -> Vec<u8> {
    let mut body = json!({ "code": code, "frame_id": "keypad-1" });
    if let Some(image) = image {
        body["image"] = json!(base64::engine::general_purpose::STANDARD.encode(image));
    }
    body.to_string().into_bytes()
}

fn answer(reply: &Reply, http: u16, status: &str) -> Value {
    assert_eq!(reply.status, http, "{}", reply.text());
    let answer = reply.json();
    assert_eq!(answer["status"], status, "{answer}");
    assert!(answer["request_id"].is_string(), "{answer}");
    answer
}

fn unlocks(daemon: &Daemon) -> usize {
    daemon.journal().iter().filter(|a| a.is_unlocked()).count()
}

const WRONG: &str = "000000000000";

#[test]
fn wrong_codes_lock_out_their_address_only_and_a_valid_code_opens_the_door() {
    let (daemon, codes) = daemon_with_codes(Setup::new().set("door.hold_ms", 500));
    let tablet = "127.0.0.1";
    for left in [2, 1, 0] {
        let denied = answer(
            &post_from(&daemon, tablet, "/code", &code_body(WRONG, None)),
            200,
            "denied",
        );
        assert_eq!(denied["attempts_left"], left, "{denied}");
        assert_eq!(denied["door"], "locked", "{denied}");
    }
    let reply = post_from(&daemon, tablet, "/code", &code_body(&codes[0], None));
    let locked = answer(&reply, 429, "locked_out");
    let retry = locked["retry_after_s"].as_u64().unwrap();
    assert!((1..=60).contains(&retry), "{locked}");
    assert_eq!(
        reply.header("Retry-After"),
        Some(retry.to_string().as_str())
    );
    assert_eq!(
        unlocks(&daemon),
        0,
        "a lockout never moves the door, even with a valid code"
    );

    // Another tablet is not locked out: its valid code opens the door through the relay.
    let granted = answer(
        &post_from(&daemon, "127.0.0.2", "/code", &code_body(&codes[1], None)),
        200,
        "granted",
    );
    assert_eq!(
        (granted["kind"].as_str(), granted["door"].as_str()),
        (Some("daily"), Some("opened")),
        "{granted}"
    );
    let id = granted["request_id"].as_str().unwrap().to_string();
    daemon.wait_for_log(&["door state=unlocked", &format!("request_id={id} ")]);
    let weekly = answer(
        &post_from(&daemon, "127.0.0.2", "/code", &code_body(&codes[3], None)),
        200,
        "granted",
    );
    assert_eq!(weekly["kind"], "weekly", "{weekly}");

    let audit = wait_for_audit(&daemon, "decision", &id);
    assert_eq!(
        (audit["reason"].as_str(), audit["code_kind"].as_str()),
        (Some("code"), Some("daily")),
        "{audit}"
    );
    assert_eq!(audit["code_index"], 2, "{audit}");
    let lines = audit_lines(&daemon);
    let refused: Vec<&str> = lines
        .iter()
        .filter(|l| l["endpoint"] == "code" && l["remote"] == tablet)
        .map(|l| l["reason"].as_str().unwrap())
        .collect();
    assert_eq!(
        refused,
        [
            "code_failed",
            "code_failed",
            "code_failed",
            "code_locked_out"
        ]
    );

    // The codes themselves are nowhere but in the codes file.
    let mut texts = daemon.logs();
    texts.extend(lines.iter().map(Value::to_string));
    for code in &codes {
        assert!(
            !texts.iter().any(|t| t.contains(code.as_str())),
            "code {code} was written out"
        );
    }
}

#[test]
fn one_request_id_names_the_refusal_its_audit_line_and_its_frame() {
    let (daemon, codes) = daemon_with_codes(Setup::new().set("codes.max_failures", 2));
    let frame = photo(STRANGER_PHOTO);
    for (http, status, reason) in [
        (200, "denied", "code_failed"),
        (200, "denied", "code_failed"),
        (429, "locked_out", "code_locked_out"),
    ] {
        let code = if status == "locked_out" {
            &codes[0]
        } else {
            WRONG
        };
        let refused = answer(
            &daemon.post("/code", &code_body(code, Some(&frame))),
            http,
            status,
        );
        let id = refused["request_id"].as_str().unwrap().to_string();
        assert_eq!(refused["frame_id"], "keypad-1");
        let audit = wait_for_audit(&daemon, "decision", &id);
        assert_eq!(
            (audit["status"].as_str(), audit["reason"].as_str()),
            (Some(status), Some(reason)),
            "{audit}"
        );
        let (image, sidecar) = wait_for_snapshot(&daemon, &id);
        assert_eq!(
            std::fs::read(&image).unwrap(),
            frame,
            "the frame as received"
        );
        assert_eq!(
            (sidecar["request_id"].as_str(), sidecar["reason"].as_str()),
            (Some(id.as_str()), Some(reason))
        );
        daemon.wait_for_log(&[
            &format!("request_id={id} "),
            "endpoint=code",
            &format!("status={status}"),
        ]);
        let files = format!("{sidecar}{audit}");
        assert!(!codes.iter().any(|c| files.contains(c.as_str())), "{files}");
    }
    assert_eq!(unlocks(&daemon), 0);
}

#[test]
fn revoked_and_single_use_codes_stop_working_while_the_daemon_runs() {
    let (daemon, codes) = daemon_with_codes(Setup::new().set("codes.single_use", true));
    let revoked = daemon.setup().run(&["codes", "revoke", &codes[0]]);
    assert!(revoked.status.success(), "{revoked:?}");
    answer(
        &daemon.post("/code", &code_body(&codes[0], None)),
        200,
        "denied",
    );

    // Two tablets type the same code at once: one of them gets in.
    let body = code_body(&codes[1], None);
    let (first, second) = std::thread::scope(|scope| {
        let one = scope.spawn(|| post_from(&daemon, "127.0.0.2", "/code", &body));
        let two = scope.spawn(|| post_from(&daemon, "127.0.0.3", "/code", &body));
        (one.join().unwrap().json(), two.join().unwrap().json())
    });
    let statuses = [
        first["status"].as_str().unwrap(),
        second["status"].as_str().unwrap(),
    ];
    assert!(
        statuses.contains(&"granted") && statuses.contains(&"denied"),
        "{first} {second}"
    );
    answer(
        &daemon.post("/code", &code_body(&codes[1], None)),
        200,
        "denied",
    );
    let shown = daemon.setup().run(&["codes", "show", "--json"]);
    assert!(
        !shown.stdout.contains(codes[1].as_str()),
        "a used code is gone: {shown:?}"
    );
    assert!(shown.stdout.contains(codes[2].as_str()), "{shown:?}");
}

#[test]
fn malformed_code_posts_are_refused_without_counting_as_failures() {
    let (daemon, codes) = daemon_with_codes(Setup::new().set("codes.max_failures", 1));
    for (body, error) in [
        (&br#"{"code": 123456}"#[..], "bad_code"),
        (br#"{"code": "1", "door": "open"}"#, "bad_json"),
        (b"123456", "bad_json"),
    ] {
        let reply = daemon.post("/code", body);
        assert_eq!(reply.status, 400, "{}", reply.text());
        assert_eq!(reply.json()["error"], error, "{}", reply.text());
    }
    answer(
        &daemon.post("/code", &code_body(&codes[2], Some(&photo(GRANTED_PHOTO)))),
        200,
        "granted",
    );
    assert_eq!(daemon.get("/code").status, 405);
}

/// Regression: a right code reset the address's failures, so two wrong codes and one right one,
/// repeated, were never locked out (one visitor's daily code made an oracle for the weekly code).
#[test]
fn regression_two_wrong_one_valid_repeated_is_locked_out() {
    let (daemon, codes) = daemon_with_codes(Setup::new());
    let tablet = "127.0.0.3";
    let send = |code: &str| post_from(&daemon, tablet, "/code", &code_body(code, None));
    for (code, http, status) in [
        (WRONG, 200, "denied"),
        (WRONG, 200, "denied"),
        (codes[0].as_str(), 200, "granted"),
        (WRONG, 200, "denied"),
        (codes[0].as_str(), 429, "locked_out"),
        (codes[3].as_str(), 429, "locked_out"),
    ] {
        answer(&send(code), http, status);
    }
}

/// Rotating addresses cannot multiply the guess rate: the building's budget pauses code entry for
/// every address, raises the alarm once (audit line, /metrics, /healthz for the admin page) and the
/// pause holds even for a valid code from an address that never failed.
#[test]
fn the_building_budget_pauses_code_entry_for_everyone_and_raises_the_alarm() {
    let (daemon, codes) = daemon_with_codes(
        Setup::new()
            .set("codes.building_max_failures", 4)
            .set("codes.building_pause_s", 600),
    );
    for (source, http, status) in [
        ("127.0.0.10", 200, "denied"),
        ("127.0.0.11", 200, "denied"),
        ("127.0.0.12", 200, "denied"),
    ] {
        answer(
            &post_from(&daemon, source, "/code", &code_body(WRONG, None)),
            http,
            status,
        );
    }
    let spent = answer(
        &post_from(&daemon, "127.0.0.13", "/code", &code_body(WRONG, None)),
        429,
        "locked_out",
    );
    assert!(spent["retry_after_s"].as_u64().unwrap() > 500, "{spent}");
    let id = spent["request_id"].as_str().unwrap();
    let alarm = wait_for_audit(&daemon, "alarm", id);
    assert_eq!(alarm["alarm"], "code_entry_paused", "{alarm}");
    assert_eq!(
        wait_for_audit(&daemon, "decision", id)["reason"],
        "code_entry_paused"
    );
    let valid = answer(
        &post_from(&daemon, "127.0.0.14", "/code", &code_body(&codes[0], None)),
        429,
        "locked_out",
    );
    assert_eq!(
        wait_for_audit(&daemon, "decision", valid["request_id"].as_str().unwrap())["reason"],
        "code_entry_paused"
    );
    assert_eq!(unlocks(&daemon), 0);
    let health = daemon.get("/healthz").json();
    assert_eq!(health["code_entry"], "paused", "{health}");
    let metrics = daemon.get("/metrics").text();
    assert!(
        metrics.contains("facegate_alarms_total{alarm=\"code_entry_paused\"} 1"),
        "{metrics}"
    );
    let alarms = audit_lines(&daemon)
        .into_iter()
        .filter(|line| line["kind"] == "alarm")
        .count();
    assert_eq!(alarms, 1, "the alarm is raised once per pause");
}

/// Regression: a code check stuck on the codes file (a slow or hung disk) held the lockout table that
/// `/healthz` asks on the dispatching thread, so the whole daemon stopped answering, and SIGTERM was
/// acted on only once the read returned. The codes file here is a FIFO: the check's read stays stuck
/// until the test writes the codes into it.
#[test]
fn a_code_check_stuck_on_the_disk_leaves_healthz_answering_and_sigterm_locking() {
    let (mut daemon, codes) = daemon_with_codes(Setup::new());
    let path = daemon.state_dir().join("codes.json");
    let contents = std::fs::read(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    harness::make_stuck_file(&path);

    std::thread::scope(|scope| {
        let stuck = scope.spawn(|| daemon.post("/code", &code_body(&codes[0], None)));
        let mut writer = harness::stuck_file_opened(&path, "the code check to open the codes file");
        let health = daemon.get("/healthz");
        assert_eq!(health.status, 200, "{}", health.text());
        assert_eq!(health.json()["code_entry"], "open", "{}", health.text());

        // SAFETY: kill(2) on the daemon, our own child, still running.
        assert_eq!(unsafe { libc::kill(daemon.pid(), libc::SIGTERM) }, 0);
        daemon.wait_for_log(&["emergency lock:", "driven locked"]);

        writer.write_all(&contents).unwrap();
        drop(writer);
        let late = stuck.join().unwrap().json();
        assert_ne!(late["door"], "opened", "{late}");
    });
    let stopped = harness::wait_for("the daemon's exit", || daemon.exited());
    assert!(stopped.success(), "{:#?}", daemon.logs());
    assert_eq!(unlocks(&daemon), 0, "{:?}", daemon.journal());
}

/// Regression: with `codes.single_use` a matching code was spent even when the door stayed locked
/// for it (here: cooling down after the visitor before), so the visitor's second try was a
/// failure towards the lockout. It is put back, and the log and audit line say so.
#[test]
fn a_single_use_code_the_door_stayed_locked_for_is_given_back() {
    let (daemon, codes) = daemon_with_codes(
        Setup::new()
            .set("codes.single_use", true)
            .set("door.hold_ms", 100)
            .set("door.cooldown_ms", 600_000),
    );
    let first = answer(
        &daemon.post("/code", &code_body(&codes[0], None)),
        200,
        "granted",
    );
    assert_eq!(first["door"], "opened", "{first}");
    daemon.wait_for_journal("the relock", |j| {
        j.last().is_some_and(|a| !a.is_unlocked()) && j.iter().any(|a| a.is_unlocked())
    });

    let second = answer(
        &daemon.post("/code", &code_body(&codes[1], None)),
        200,
        "granted",
    );
    assert_eq!(second["door"], "cooling_down", "{second}");
    let id = second["request_id"].as_str().unwrap();
    let audit = wait_for_audit(&daemon, "decision", id);
    assert_eq!(audit["code_given_back"], true, "{audit}");
    daemon.wait_for_log(&[&format!("request_id={id} "), "code_given_back=true"]);

    let shown = daemon.setup().run(&["codes", "show", "--json"]);
    assert!(
        shown.stdout.contains(&codes[1]) && !shown.stdout.contains(&codes[0]),
        "the spent code is gone, the one the door stayed locked for is back: {shown:?}"
    );
    assert_eq!(unlocks(&daemon), 1);
}
