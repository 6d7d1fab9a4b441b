//! Visitor codes end to end: the `facegate codes` commands on a real state dir, and `POST /code` on the
//! real daemon over loopback with the sim door journaling to a file.

mod harness;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use serde_json::Value;

use harness::{run_facegate, Finished};

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
