//! Liveness and confirmation over several frames through `facegate serve` (issue 11): the real binary on
//! loopback, the sim door journaling to a file, the real MiniFASNet models and the `_liveness/` samples,
//! each enrolled under its own name. What the tablet and the door see is asserted, not internals.

mod harness;

use base64::Engine as _;
use serde_json::{json, Value};

use harness::{photo, wait_for, Daemon, Setup, NO_FACE_PHOTO};

const LIVE: &str = "_liveness/real_image_T1.jpg";
const PRINT: &str = "_liveness/spoof_image_F1.jpg";

/// The standard test daemon with liveness on and the two samples enrolled (enrolment does not check
/// liveness, so the print's face is enrolled too: the strongest case for an attacker).
fn with_samples_enrolled(setup: Setup) -> Setup {
    let setup = setup.set("liveness.enabled", true);
    for (name, relative) in [("live_person", LIVE), ("printed_person", PRINT)] {
        let path = harness::assets_dir().join("faces").join(relative);
        let finished = setup.run(&["enroll", "--name", name, path.to_str().unwrap()]);
        assert!(
            finished.status.success(),
            "enrolling {relative}: {finished:?}"
        );
    }
    setup
}

fn post(daemon: &Daemon, relative: &str, tablet_id: Option<&str>) -> Value {
    let mut body = json!({
        "image": base64::engine::general_purpose::STANDARD.encode(photo(relative)),
    });
    if let Some(id) = tablet_id {
        body["tablet_id"] = json!(id);
    }
    let reply = daemon.post("/image", body.to_string().as_bytes());
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.json()
}

fn unlocks(daemon: &Daemon) -> usize {
    daemon.journal().iter().filter(|a| a.is_unlocked()).count()
}

#[test]
fn an_enrolled_print_is_answered_spoof_kept_as_a_snapshot_and_never_opens() {
    let daemon = with_samples_enrolled(Setup::new()).serve();
    let answer = post(&daemon, PRINT, None);
    assert_eq!(answer["status"], "spoof", "{answer}");
    assert_eq!(answer["door"], "locked", "{answer}");
    assert_eq!(answer["identity"], Value::Null, "{answer}");
    let liveness = &answer["liveness"];
    assert!(
        liveness["score"].as_f64().unwrap() < liveness["threshold"].as_f64().unwrap(),
        "{answer}"
    );
    assert!(answer["timings"]["liveness_ms"].as_f64().unwrap() > 0.0);
    let id = answer["request_id"].as_str().unwrap().to_string();
    let sidecar = wait_for(&format!("the spoof snapshot {id}"), || {
        let days = std::fs::read_dir(daemon.state_dir().join("snapshots")).ok()?;
        days.flatten()
            .filter_map(|day| std::fs::read(day.path().join(format!("{id}.json"))).ok())
            .next()
    });
    let sidecar: Value = serde_json::from_slice(&sidecar).unwrap();
    assert_eq!(sidecar["reason"], "spoof", "{sidecar}");
    assert_eq!(sidecar["liveness_models"].as_array().unwrap().len(), 2);
    assert_eq!(unlocks(&daemon), 0, "{:?}", daemon.journal());

    let answer = post(&daemon, LIVE, None);
    assert_eq!(
        (&answer["status"], &answer["identity"], &answer["door"]),
        (&json!("granted"), &json!("live_person"), &json!("opened")),
        "{answer}"
    );
    daemon.wait_for_journal("the grant's unlock", |j| j.iter().any(|a| a.is_unlocked()));
}

#[test]
fn with_two_confirming_frames_only_two_grants_from_one_tablet_open() {
    let setup = Setup::new()
        .set("door.confirm_frames", 2)
        .set("door.confirm_window_ms", 30_000);
    let daemon = with_samples_enrolled(setup).serve();
    // One grant from each of two tablets behind the same address: neither completes.
    for tablet in ["front", "back"] {
        let answer = post(&daemon, LIVE, Some(tablet));
        assert_eq!(
            (&answer["status"], &answer["door"]),
            (&json!("granted"), &json!("confirming")),
            "{tablet}: {answer}"
        );
    }
    // A frame without a face from the front tablet ends its streak.
    let answer = post(&daemon, NO_FACE_PHOTO, Some("front"));
    assert_eq!(answer["status"], "no_face", "{answer}");
    let answer = post(&daemon, LIVE, Some("front"));
    assert_eq!(answer["door"], "confirming", "{answer}");
    assert_eq!(unlocks(&daemon), 0, "{:?}", daemon.journal());
    // The second consecutive grant from the front tablet opens.
    let answer = post(&daemon, LIVE, Some("front"));
    assert_eq!(
        (&answer["status"], &answer["door"]),
        (&json!("granted"), &json!("opened")),
        "{answer}"
    );
    daemon.wait_for_journal("the confirmed grant's unlock", |j| {
        j.iter().filter(|a| a.is_unlocked()).count() == 1
    });
}
