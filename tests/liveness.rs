//! Liveness (issue 11) on the real MiniFASNet models and the `_liveness/` samples: a print or a screen of an
//! enrolled face is answered `spoof` and never opens, the live sample is granted, faces too small to judge
//! are never granted, and strangers and empty frames never pay for liveness.

mod support;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use facegate::confirmation::{Confirmations, TabletKey};
use facegate::decision::{
    confirming_person, decide_with, Checks, Decision, Liveness, Outcome, Status,
};
use facegate::gallery::Gallery;
use facegate::recognition::Recognition;
use facegate::vision::{LivenessReading, Recognizer};

use support::Engine;

const REAL: &str = "_liveness/real_image_T1.jpg";
const SPOOFS: [&str; 2] = [
    "_liveness/spoof_image_F1.jpg",
    "_liveness/spoof_image_F2.jpg",
];

/// Each `_liveness/` sample enrolled as its own person from the very image: enrolment does not check
/// liveness, so the spoofs' faces are enrolled too, the strongest case for an attacker.
fn gallery_of_samples(engine: &Engine, recognizer: &mut Recognizer) -> Gallery {
    let mut gallery = engine.empty_gallery();
    for (i, path) in support::category("_liveness").iter().enumerate() {
        let report = engine
            .enrol(recognizer, &mut gallery, &format!("sample{i}"), &[path])
            .unwrap_or_else(|err| panic!("enrolling {path}: {err}"));
        assert_eq!(report.accepted(), 1, "{path}: {:?}", report.verdicts);
    }
    gallery
}

fn decide_alone(engine: &Engine, recognition: &Recognition) -> Decision {
    let checks = Checks {
        liveness: Liveness::from_reading(recognition.liveness.as_ref()),
        liveness_threshold: engine.config.liveness.threshold,
        tally: None,
    };
    decide_with(
        &recognition.outcome,
        &checks,
        Duration::ZERO,
        engine.config.max_decision_age(),
    )
}

#[test]
fn an_enrolled_face_on_a_print_or_screen_is_spoof_and_the_live_one_is_granted() {
    let engine = Engine::with_liveness();
    let mut recognizer = engine.recognizer();
    let gallery = gallery_of_samples(engine, &mut recognizer);
    let real = engine.recognize(&mut recognizer, &gallery, REAL);
    let decision = decide_alone(engine, &real);
    assert_eq!(
        (decision.status, decision.may_open),
        (Status::Granted, true),
        "{real:?}"
    );
    assert!(real.timings.liveness_ms > 0.0);
    for path in SPOOFS {
        let recognition = engine.recognize(&mut recognizer, &gallery, path);
        assert!(
            matches!(recognition.outcome, Outcome::Recognised(_)),
            "{path} is enrolled, so it is recognised: {:?}",
            recognition.outcome
        );
        let decision = decide_alone(engine, &recognition);
        assert_eq!(
            (decision.status, decision.may_open, decision.identity),
            (Status::Spoof, false, None),
            "{path}: {:?}",
            recognition.liveness
        );
        let verdict = decision.liveness.expect("the answer carries the liveness");
        assert!(verdict.score.unwrap() < verdict.threshold, "{verdict:?}");
        match recognition.liveness {
            Some(LivenessReading::Scored { models, .. }) => {
                assert_eq!(models.len(), 2, "both MiniFASNets ran");
            }
            other => panic!("{path}: {other:?}"),
        }
    }
}

#[test]
fn strangers_and_empty_frames_pay_nothing_for_liveness() {
    let engine = Engine::with_liveness();
    let mut recognizer = engine.recognizer();
    let gallery = engine.gallery_of_first_photos(&mut recognizer, ["obama"]);
    for path in [REAL, SPOOFS[0], "_noface/cat.jpg"] {
        let recognition = engine.recognize(&mut recognizer, &gallery, path);
        assert!(!matches!(recognition.outcome, Outcome::Recognised(_)));
        assert_eq!(recognition.liveness, None, "{path}");
        assert_eq!(recognition.timings.liveness_ms, 0.0, "{path}");
    }
}

#[test]
fn a_face_too_small_to_judge_is_never_granted() {
    let engine = Engine::with_liveness();
    let mut recognizer = engine.recognizer();
    let gallery = engine.gallery_of_first_photos(&mut recognizer, ["obama"]);
    // A 427x240 frame: Obama is recognised, but his face is 60 px wide, under liveness.min_face_px (64).
    let recognition = engine.recognize(&mut recognizer, &gallery, "_edge/obama-240p.jpg");
    assert!(matches!(recognition.outcome, Outcome::Recognised(_)));
    match &recognition.liveness {
        Some(LivenessReading::TooSmall {
            face_px,
            min_face_px,
        }) => assert!(face_px < min_face_px),
        other => panic!("{other:?}"),
    }
    let decision = decide_alone(engine, &recognition);
    assert_eq!(
        (decision.status, decision.may_open),
        (Status::TooFar, false)
    );
}

#[test]
fn over_several_frames_the_mean_liveness_decides() {
    let engine = Engine::with_liveness();
    let mut recognizer = engine.recognizer();
    let gallery = gallery_of_samples(engine, &mut recognizer);
    let max_age = engine.config.max_decision_age();
    let tablet = TabletKey {
        address: IpAddr::from([127, 0, 0, 1]),
        tablet_id: None,
    };
    let mut confirmations = Confirmations::new(3, Duration::from_millis(1000));
    let start = Instant::now();
    let mut frame = 0;
    let mut send = |path: &str| {
        let recognition = engine.recognize(&mut recognizer, &gallery, path);
        let liveness = Liveness::from_reading(recognition.liveness.as_ref());
        let now = start + Duration::from_millis(150 * frame);
        frame += 1;
        let tally = match confirming_person(&recognition.outcome, liveness, Duration::ZERO, max_age)
        {
            Some(person) => Some(confirmations.grant(&tablet, person, liveness.score(), now)),
            None => {
                confirmations.interrupt(&tablet);
                None
            }
        };
        let checks = Checks {
            liveness,
            liveness_threshold: engine.config.liveness.threshold,
            tally,
        };
        decide_with(&recognition.outcome, &checks, Duration::ZERO, max_age)
    };
    // Three frames of the live sample: confirming, confirming, open.
    for want in [Some((1, 3)), Some((2, 3))] {
        let d = send(REAL);
        assert_eq!(
            (d.status, d.may_open, d.confirming),
            (Status::Granted, false, want)
        );
    }
    let d = send(REAL);
    assert_eq!((d.status, d.may_open), (Status::Granted, true));
    assert!(d.liveness.unwrap().mean.unwrap() >= engine.config.liveness.threshold);
    // Three frames of a print: answered granted-but-confirming until the mean is judged, then spoof.
    for _ in 0..2 {
        let d = send(SPOOFS[0]);
        assert!(!d.may_open && d.confirming.is_some(), "{d:?}");
    }
    let d = send(SPOOFS[0]);
    assert_eq!((d.status, d.may_open), (Status::Spoof, false), "{d:?}");
}
