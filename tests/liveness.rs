//! Liveness (issue 11) on the real MiniFASNet models and the `_liveness/` samples: a print or a screen of an
//! enrolled face is answered `spoof` and never opens, the live sample is granted, faces too small to judge
//! are never granted, and strangers and empty frames never pay for liveness.

mod support;

use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::Utc;

use facegate::confirmation::{Confirmations, TabletKey};
use facegate::decision::{Decision, Freshness, FreshnessRules, Outcome, Status};
use facegate::frame::CheckedImage;
use facegate::gallery::Gallery;
use facegate::record::{DecisionRecord, Endpoint};
use facegate::service::{judge, Confirming};
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

/// One photo through the daemon's own judging (recognition, liveness, confirmation when given,
/// decision), as a fresh frame: the decision and the record the answer is rendered from.
fn judge_photo(
    engine: &Engine,
    recognizer: &mut Recognizer,
    gallery: &Gallery,
    path: &str,
    confirmation: Option<Confirming<'_>>,
) -> (Decision, DecisionRecord) {
    let rules = FreshnessRules::of(&engine.config.door);
    let received_at = Instant::now();
    let freshness = Freshness::of_frame(received_at, Utc::now(), None, rules);
    let image = CheckedImage::check(support::photo(path), &engine.config.frame).expect(path);
    let mut record = DecisionRecord::new("test", Endpoint::Identify, Status::Error);
    let decision = judge(
        recognizer,
        gallery,
        &jiff::tz::TimeZone::UTC,
        engine.threshold,
        engine.config.liveness.threshold,
        &image,
        freshness,
        rules,
        received_at,
        confirmation,
        &mut record,
    )
    .unwrap_or_else(|err| panic!("{path}: {err}"));
    (decision, record)
}

#[test]
fn an_enrolled_face_on_a_print_or_screen_is_spoof_and_the_live_one_is_granted() {
    let engine = Engine::with_liveness();
    let mut recognizer = engine.recognizer();
    let gallery = gallery_of_samples(engine, &mut recognizer);
    let real = engine.recognize(&mut recognizer, &gallery, REAL);
    assert!(real.timings.liveness_ms > 0.0);
    let (decision, record) = judge_photo(engine, &mut recognizer, &gallery, REAL, None);
    assert_eq!(
        (decision.status, decision.may_open()),
        (Status::Granted, true),
        "{record:?}"
    );
    let answer = record.answer();
    assert!(
        answer["liveness"]["score"].as_f64().unwrap() >= 0.8,
        "{answer}"
    );
    assert!(
        answer["timings"]["liveness_ms"].as_f64().unwrap() > 0.0,
        "{answer}"
    );
    for path in SPOOFS {
        let recognition = engine.recognize(&mut recognizer, &gallery, path);
        assert!(
            matches!(recognition.outcome, Outcome::Recognised(_)),
            "{path} is enrolled, so it is recognised: {:?}",
            recognition.outcome
        );
        match &recognition.liveness {
            Some(LivenessReading::Scored { models, .. }) => {
                assert_eq!(models.len(), 2, "both MiniFASNets ran");
            }
            other => panic!("{path}: {other:?}"),
        }
        let (decision, record) = judge_photo(engine, &mut recognizer, &gallery, path, None);
        assert_eq!(
            (decision.status, decision.may_open(), decision.identity),
            (Status::Spoof, false, None),
            "{path}: {:?}",
            recognition.liveness
        );
        let answer = record.answer();
        assert_eq!(answer["status"], "spoof");
        assert_eq!(answer["door"], "locked");
        assert_eq!(answer["identity"], serde_json::Value::Null);
        let score = answer["liveness"]["score"].as_f64().unwrap();
        assert!(
            score < answer["liveness"]["threshold"].as_f64().unwrap(),
            "{answer}"
        );
        let sidecar = record.sidecar("spoof");
        assert_eq!(
            sidecar["liveness_models"].as_array().unwrap().len(),
            2,
            "{sidecar}"
        );
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
        let (_, record) = judge_photo(engine, &mut recognizer, &gallery, path, None);
        assert!(record.answer().get("liveness").is_none(), "{path}");
    }
}

#[test]
fn a_face_too_small_to_judge_is_never_granted_and_the_answer_says_why() {
    let engine = Engine::with_liveness();
    let mut recognizer = engine.recognizer();
    let gallery = engine.gallery_of_first_photos(&mut recognizer, ["obama"]);
    // A 427x240 frame: Obama is recognised, but his face is 60 px wide, under liveness.min_face_px (64).
    let path = "_edge/obama-240p.jpg";
    let recognition = engine.recognize(&mut recognizer, &gallery, path);
    assert!(matches!(recognition.outcome, Outcome::Recognised(_)));
    match &recognition.liveness {
        Some(LivenessReading::TooSmall {
            face_px,
            min_face_px,
        }) => assert!(face_px < min_face_px),
        other => panic!("{other:?}"),
    }
    let (decision, record) = judge_photo(engine, &mut recognizer, &gallery, path, None);
    assert_eq!(
        (decision.status, decision.may_open()),
        (Status::TooFar, false)
    );
    let answer = record.answer();
    assert_eq!(answer["status"], "too_far");
    assert!(
        answer["message"].as_str().unwrap().contains("come closer"),
        "{answer}"
    );
}

#[test]
fn over_several_frames_every_frame_must_look_live() {
    let engine = Engine::with_liveness();
    let mut recognizer = engine.recognizer();
    let gallery = gallery_of_samples(engine, &mut recognizer);
    let table = Mutex::new(Confirmations::new(3, Duration::from_millis(5_000)));
    let tablet = TabletKey::Address {
        address: IpAddr::from([127, 0, 0, 1]),
        tablet_id: None,
    };
    let mut send = |path: &str| {
        let confirming = Confirming {
            table: &table,
            tablet: tablet.clone(),
        };
        judge_photo(engine, &mut recognizer, &gallery, path, Some(confirming))
    };
    // Three frames of the live sample: confirming, confirming, open.
    for want in [(1, 3), (2, 3)] {
        let (d, record) = send(REAL);
        assert_eq!(
            (d.status, d.may_open(), d.confirming),
            (Status::Granted, false, Some(want))
        );
        assert_eq!(record.answer()["door"], "confirming");
    }
    let (d, _) = send(REAL);
    assert_eq!((d.status, d.may_open()), (Status::Granted, true));
    assert!(d.liveness.unwrap().lowest.unwrap() >= engine.config.liveness.threshold);
    // A print is a spoof on its own frame, and it breaks a streak of live frames.
    send(REAL);
    send(REAL);
    let (d, _) = send(SPOOFS[0]);
    assert_eq!((d.status, d.may_open()), (Status::Spoof, false), "{d:?}");
    let (d, _) = send(REAL);
    assert_eq!((d.may_open(), d.confirming), (false, Some((1, 3))));
    // Two live frames, a stranger, one live frame: the stranger broke the streak.
    let stranger = "_noface/cat.jpg";
    send(REAL);
    send(REAL);
    send(stranger);
    let (d, _) = send(REAL);
    assert_eq!((d.may_open(), d.confirming), (false, Some((1, 3))));
}

/// The daemon's workers share one set of liveness classifiers (docs/performance.md, "Memory"): two
/// workers judging at once get exactly the scores a recognizer with classifiers of its own gives.
#[test]
fn workers_sharing_the_liveness_classifiers_score_as_one_alone() {
    let engine = Engine::with_liveness();
    let mut alone = engine.recognizer();
    let gallery = gallery_of_samples(engine, &mut alone);
    let paths = [REAL, SPOOFS[0], SPOOFS[1]];
    let expected: Vec<Option<f32>> = paths
        .iter()
        .map(|path| {
            engine
                .recognize(&mut alone, &gallery, path)
                .liveness
                .map(|l| l.score().unwrap())
        })
        .collect();
    assert!(expected.iter().all(Option::is_some), "{expected:?}");
    let workers = Recognizer::load_workers(&engine.models, &engine.config.recognition, 2)
        .expect("models load");
    std::thread::scope(|scope| {
        for mut worker in workers {
            let (gallery, expected) = (&gallery, &expected);
            scope.spawn(move || {
                for _ in 0..3 {
                    for (path, score) in paths.iter().zip(expected) {
                        let recognition = engine.recognize(&mut worker, gallery, path);
                        assert_eq!(
                            recognition.liveness.map(|l| l.score().unwrap()),
                            *score,
                            "{path}"
                        );
                    }
                }
            });
        }
    });
}
