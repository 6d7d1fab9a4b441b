//! Enrolment on real models and photos: only photos with exactly one face are taken, an enrolment that
//! takes nothing is refused, and a second name for an enrolled face is flagged.

mod support;

use facegate::enrollment::{EnrolmentError, Verdict};
use facegate::gallery::Gallery;

use support::{decide_fresh, file_name, Engine};

/// The verdict on each photo, by file name.
fn verdicts(report: &facegate::enrollment::EnrolmentReport) -> Vec<(&str, &Verdict)> {
    report
        .verdicts
        .iter()
        .map(|(source, verdict)| (source.as_str(), verdict))
        .collect()
}

fn rejection_reason(verdict: &Verdict) -> &str {
    match verdict {
        Verdict::Rejected { reason } => reason,
        Verdict::Accepted { face_score } => panic!("accepted (face score {face_score})"),
    }
}

#[test]
fn photos_without_exactly_one_face_are_rejected_with_the_reason() {
    let engine = Engine::get();
    let mut recognizer = engine.recognizer();
    let mut gallery = engine.empty_gallery();
    let photos = [
        "obama/obama.jpg",
        "_noface/cat.jpg",
        "_group/two_people.jpg",
        "_group/multiface.jpg",
        // One person, but YuNet also fires (0.997) on the painted background: rejected, not guessed.
        "biden/biden2.jpg",
    ];
    let report = engine
        .enrol(&mut recognizer, &mut gallery, "obama", &photos)
        .unwrap();
    let verdicts = verdicts(&report);
    assert_eq!(verdicts.len(), photos.len());
    assert!(matches!(
        verdicts[0],
        ("obama.jpg", Verdict::Accepted { .. })
    ));
    let reasons: Vec<(&str, &str)> = verdicts[1..]
        .iter()
        .map(|(source, verdict)| (*source, rejection_reason(verdict)))
        .collect();
    assert!(reasons[0].1.contains("no acceptable face"), "{reasons:?}");
    assert!(reasons[1].1.starts_with("2 faces"), "{reasons:?}");
    assert!(reasons[2].1.starts_with("6 faces"), "{reasons:?}");
    assert!(reasons[3].1.starts_with("2 faces"), "{reasons:?}");
    assert_eq!(report.accepted(), 1);
    assert_eq!(
        gallery.sample_count(),
        1,
        "only the accepted photo is stored"
    );
    assert_eq!(gallery.people()[0].samples[0].source, "obama.jpg");
}

#[test]
fn a_damaged_photo_is_rejected_with_the_frame_error() {
    let engine = Engine::get();
    let mut recognizer = engine.recognizer();
    let mut gallery = engine.empty_gallery();
    let whole = support::photo("obama/obama.jpg");
    let cut = &whole[..whole.len() / 2];
    let candidates = [
        facegate::enrollment::Candidate {
            source: "cut.jpg".into(),
            bytes: cut,
        },
        facegate::enrollment::Candidate {
            source: "obama.jpg".into(),
            bytes: &whole,
        },
    ];
    let report = facegate::enrollment::enroll(
        &mut recognizer,
        &mut gallery,
        "obama",
        &candidates,
        &engine.config.frame,
        engine.config.recognition.lookalike_warning,
        support::ENROLLED_AT,
    )
    .unwrap();
    assert!(
        rejection_reason(&report.verdicts[0].1).contains("truncated"),
        "{:?}",
        report.verdicts
    );
    assert_eq!(report.accepted(), 1);
}

#[test]
fn an_enrolment_with_nothing_accepted_is_refused_and_changes_nothing() {
    let engine = Engine::get();
    let mut recognizer = engine.recognizer();
    let mut gallery = engine.gallery_of_first_photos(&mut recognizer, ["biden"]);
    let before = gallery.to_json();
    let result = engine.enrol(
        &mut recognizer,
        &mut gallery,
        "nobody",
        &["_noface/dog.jpg", "_group/couple.jpg"],
    );
    match result {
        Err(EnrolmentError::NothingAccepted { name, reasons }) => {
            assert_eq!(name, "nobody");
            assert!(!reasons.is_empty(), "each rejected image says why");
        }
        other => panic!("expected NothingAccepted, got {other:?}"),
    }
    assert_eq!(gallery.to_json(), before);
}

#[test]
fn the_same_person_under_another_name_is_flagged_as_a_lookalike() {
    let engine = Engine::get();
    let mut recognizer = engine.recognizer();
    let mut gallery = engine.gallery_of_first_photos(&mut recognizer, ["obama", "biden"]);
    // More photos of the same person under the same name are not a look-alike of themselves.
    let report = engine
        .enrol(
            &mut recognizer,
            &mut gallery,
            "obama",
            &["obama/obama3.jpg"],
        )
        .unwrap();
    assert_eq!(report.lookalike, None);
    let report = engine
        .enrol(
            &mut recognizer,
            &mut gallery,
            "barack",
            &["obama/obama2.jpg"],
        )
        .unwrap();
    let lookalike = report.lookalike.expect("obama is already enrolled");
    assert_eq!(lookalike.name, "obama");
    assert!(
        lookalike.score >= engine.config.recognition.lookalike_warning,
        "{lookalike:?}"
    );
    // The warning does not stop the enrolment: the admin decides.
    assert_eq!(gallery.people().len(), 3);
}

#[test]
fn a_different_person_is_not_flagged() {
    let engine = Engine::get();
    let mut recognizer = engine.recognizer();
    let mut gallery =
        engine.gallery_of_first_photos(&mut recognizer, ["obama", "biden", "kit_harington"]);
    let report = engine
        .enrol(
            &mut recognizer,
            &mut gallery,
            "rose_leslie",
            &["rose_leslie/img1.jpg", "rose_leslie/img2.jpg"],
        )
        .unwrap();
    assert_eq!(report.accepted(), 2);
    assert_eq!(report.lookalike, None);
    assert_eq!(report.inconsistent, None);
}

#[test]
fn photos_of_different_people_under_one_name_are_flagged_inconsistent() {
    let engine = Engine::get();
    let mut recognizer = engine.recognizer();
    let mut gallery = engine.empty_gallery();
    let report = engine
        .enrol(
            &mut recognizer,
            &mut gallery,
            "mixed",
            &["obama/obama.jpg", "biden/biden.jpg"],
        )
        .unwrap();
    let lowest = report.inconsistent.expect("obama and biden disagree");
    assert!(lowest < engine.config.recognition.lookalike_warning);
}

#[test]
fn a_saved_gallery_recognises_the_same_after_loading() {
    let engine = Engine::get();
    let mut recognizer = engine.recognizer();
    let gallery = engine.gallery_of_first_photos(&mut recognizer, ["obama", "biden"]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gallery.json");
    gallery.save(&path).unwrap();
    let loaded = Gallery::load(&path, &engine.embedder_id()).unwrap();
    assert_eq!(loaded.people(), gallery.people());
    for probe in ["obama/obama2.jpg", "biden/biden2.jpg"] {
        let before = engine.recognize(&mut recognizer, &gallery, probe);
        let after = engine.recognize(&mut recognizer, &loaded, probe);
        assert_eq!(before.outcome, after.outcome, "{probe}");
        assert_eq!(
            decide_fresh(&after.outcome).identity.as_deref(),
            Some(support::person_of(probe)),
            "{probe}"
        );
    }
    assert_eq!(
        loaded.people()[0].samples[0].source,
        file_name("obama/obama.jpg")
    );
}
