//! The recognition engine end to end on real models and real photos (issue 2): who is granted, who never is,
//! what group and edge images do, and that a worker's answer depends on its own frame only.

mod support;

use std::sync::{Arc, Barrier, OnceLock};
use std::thread;

use facegate::decision::{Outcome, Status};
use facegate::frame;
use facegate::gallery::Gallery;
use facegate::vision::Recognizer;

use support::{decide_fresh, person_of, pinned_face_count, status, Engine};

/// Genuine photos the default threshold refuses when each person is enrolled from their first photo
/// (by file name). Each would still be nearest its own person, refused (unknown), never granted as
/// someone else. Re-pinned from `["deepface_id04/img3.jpg"]` when the quick detection pass at 320 became
/// the default (issue 20): that photo scored 0.447 against deepface_id04/img12.jpg with landmarks from
/// the full 640 pass (docs/accuracy.md), and scores above the 0.45 threshold with the quick pass's.
const KNOWN_FALSE_REJECTS: [&str; 0] = [];

/// Photos of `_noface/` in which the default quick pass at 320 finds a face the full 640 pass does not
/// (re-pinned when it became the default, issue 20): answered unknown, never granted.
const QUICK_PASS_FALSE_FACES: [&str; 1] = ["_noface/HDRtoneMapping_memorialSample.jpg"];

/// A recognizer with the quick detection pass off: one full-size pass, the detector `detect_all` uses.
fn full_pass_recognizer(engine: &Engine) -> Recognizer {
    let mut settings = engine.config.recognition.clone();
    settings.coarse_detect_side = 0;
    Recognizer::load(&engine.models, &settings).expect("models load")
}

/// The 20 identities, each enrolled from all of their photos: the widest gallery a stranger can hit.
fn everyone() -> &'static Gallery {
    static GALLERY: OnceLock<Gallery> = OnceLock::new();
    GALLERY.get_or_init(|| {
        let engine = Engine::get();
        let people = support::people();
        assert_eq!(
            people.len(),
            20,
            "tests/faces.toml should pin 20 identities"
        );
        engine.gallery_of_all_photos(&mut engine.recognizer(), people.keys().map(String::as_str))
    })
}

#[test]
fn every_person_is_granted_from_their_other_photos_with_one_photo_enrolled() {
    let engine = Engine::get();
    let mut recognizer = engine.recognizer();
    let people = support::people();
    let gallery =
        engine.gallery_of_first_photos(&mut recognizer, people.keys().map(String::as_str));
    let mut probes = 0;
    let mut refused = Vec::new();
    for (person, paths) in &people {
        for path in &paths[1..] {
            probes += 1;
            let recognition = engine.recognize(&mut recognizer, &gallery, path);
            let decision = decide_fresh(&recognition.outcome);
            match decision.identity.as_deref() {
                Some(name) => assert_eq!(name, person, "{path} was granted as {name}"),
                None => refused.push((path.as_str(), recognition.outcome)),
            }
        }
    }
    assert_eq!(probes, 61, "20 people, 81 photos, one of each enrolled");
    let refused_paths: Vec<&str> = refused.iter().map(|(path, _)| *path).collect();
    assert_eq!(
        refused_paths, KNOWN_FALSE_REJECTS,
        "genuine photos refused at threshold {}: {refused:?}",
        engine.threshold
    );
    for (path, outcome) in &refused {
        match outcome {
            Outcome::Unknown { best: Some(best) } => {
                assert_eq!(best.name, person_of(path), "{path}: {outcome:?}");
                assert!(best.score < engine.threshold, "{path}: {outcome:?}");
            }
            other => panic!("{path} should be an unknown face, not {other:?}"),
        }
    }
}

#[test]
fn people_who_are_not_enrolled_are_never_granted() {
    let engine = Engine::get();
    let mut recognizer = engine.recognizer();
    let people = support::people();
    let names: Vec<&str> = people.keys().map(String::as_str).collect();
    // Every other person is a stranger, then the other way round, so each photo is tried once as one.
    for stranger_parity in [0, 1] {
        let strangers: Vec<&str> = names
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 2 == stranger_parity)
            .map(|(_, name)| *name)
            .collect();
        let mut gallery = everyone().clone();
        for stranger in &strangers {
            gallery.remove(stranger).expect("everyone is enrolled");
        }
        assert_eq!(gallery.people().len(), 10);
        for stranger in strangers {
            for path in &people[stranger] {
                let recognition = engine.recognize(&mut recognizer, &gallery, path);
                let decision = decide_fresh(&recognition.outcome);
                assert_eq!(
                    (decision.status, decision.may_open()),
                    (Status::Unknown, false),
                    "{path} ({stranger}, not enrolled): {:?}",
                    recognition.outcome
                );
            }
        }
    }
}

#[test]
fn images_without_a_face_are_no_face() {
    let engine = Engine::get();
    let mut recognizer = engine.recognizer();
    let mut full_pass = full_pass_recognizer(engine);
    for path in support::category("_noface") {
        let recognition = engine.recognize(&mut full_pass, everyone(), &path);
        assert_eq!(recognition.faces, 0, "{path} (full pass)");
        assert_eq!(status(&recognition.outcome), Status::NoFace, "{path}");
        let recognition = engine.recognize(&mut recognizer, everyone(), &path);
        if QUICK_PASS_FALSE_FACES.contains(&path.as_str()) {
            let decision = decide_fresh(&recognition.outcome);
            assert!(!decision.may_open(), "{path}: {:?}", recognition.outcome);
            assert_eq!(decision.status, Status::Unknown, "{path}");
        } else {
            assert_eq!(recognition.faces, 0, "{path}");
            assert_eq!(status(&recognition.outcome), Status::NoFace, "{path}");
        }
    }
}

#[test]
fn hard_negatives_are_never_granted_even_when_the_detector_fires() {
    let engine = Engine::get();
    let mut recognizer = engine.recognizer();
    let mut detector_fired = 0;
    for path in support::category("_hard_negative") {
        let recognition = engine.recognize(&mut recognizer, everyone(), &path);
        let decision = decide_fresh(&recognition.outcome);
        assert!(
            !decision.may_open() && decision.identity.is_none(),
            "{path}: {:?}",
            recognition.outcome
        );
        if recognition.faces > 0 {
            detector_fired += 1;
            assert_eq!(decision.status, Status::Unknown, "{path}");
        }
    }
    assert!(
        detector_fired >= 1,
        "YuNet fires on some hard negatives (dogs, plant, puppy); if none gives a face any more, \
         these images no longer test that a false detection is survivable"
    );
}

#[test]
fn liveness_strangers_are_never_granted() {
    let engine = Engine::get();
    let mut recognizer = engine.recognizer();
    for path in support::category("_liveness") {
        let recognition = engine.recognize(&mut recognizer, everyone(), &path);
        assert_eq!(recognition.faces, 1, "{path}");
        assert_eq!(
            status(&recognition.outcome),
            Status::Unknown,
            "{path}: {:?}",
            recognition.outcome
        );
    }
}

/// Faces the production pipeline finds in each group photo. tests/faces.toml counts every face YuNet
/// finds at <= 640 px; production also drops faces narrower than `min_face_px` (40 px at 640 px), so
/// two photos count fewer: bald_guys 22 of 24 (faces of 31 and 15 px; one of 40.0 px falls either
/// side of the limit with the decoder's rounding: libjpeg's and `zune-jpeg`'s pixels, halved, keep it
/// for 22, `jpeg-decoder`'s scaled decode gave 21), 2007_007763 3 of 7 (four faces of 25-31 px).
const GROUP_FACES: [(&str, usize); 9] = [
    ("_group/2007_007763.jpg", 3),
    ("_group/2008_002506.jpg", 3),
    ("_group/bald_guys.jpg", 22),
    ("_group/couple.jpg", 2),
    ("_group/kit_with_rose.jpg", 2),
    ("_group/multiface.jpg", 6),
    ("_group/obama_and_biden.jpg", 3),
    ("_group/selfie-many-people.jpg", 4),
    ("_group/two_people.jpg", 2),
];

#[test]
fn group_photos_count_every_face_above_the_minimum_size() {
    let engine = Engine::get();
    let mut recognizer = engine.recognizer();
    let empty = engine.empty_gallery();
    assert_eq!(
        support::category("_group").len(),
        GROUP_FACES.len(),
        "every pinned group photo has an expected count"
    );
    for (path, expected) in GROUP_FACES {
        let recognition = engine.recognize(&mut recognizer, &empty, path);
        assert_eq!(recognition.faces, expected, "{path}");
        assert!(expected <= pinned_face_count(path), "{path}");
    }
    // Without the size limit the counts come back to the pinned ones (bald_guys finds one more, a
    // 15 px face scored 0.90, right at the detector's score threshold).
    let mut config = engine.config.clone();
    config.recognition.min_face_px = 0;
    let mut unlimited = Recognizer::load(&engine.models, &config.recognition).expect("models load");
    for path in ["_group/2007_007763.jpg", "_group/bald_guys.jpg"] {
        let recognition = engine.recognize(&mut unlimited, &empty, path);
        let pinned = pinned_face_count(path);
        assert!(
            recognition.faces.abs_diff(pinned) <= 1,
            "{path}: {} faces without min_face_px, {pinned} pinned",
            recognition.faces
        );
    }
}

#[test]
fn in_a_group_photo_the_decision_is_about_the_largest_face() {
    let engine = Engine::get();
    // The full pass, so that the face decided on is the one `detect_all` finds, to the last digit of
    // its score (the default quick pass takes its landmarks from a smaller image).
    let mut recognizer = full_pass_recognizer(engine);
    let gallery = engine.gallery_of_first_photos(
        &mut recognizer,
        ["obama", "biden", "kit_harington", "rose_leslie"],
    );
    let cases = [
        ("_group/two_people.jpg", ["obama", "biden"]),
        ("_group/obama_and_biden.jpg", ["obama", "biden"]),
        ("_group/kit_with_rose.jpg", ["kit_harington", "rose_leslie"]),
    ];
    for (path, pictured) in cases {
        let recognition = engine.recognize(&mut recognizer, &gallery, path);
        let decision = decide_fresh(&recognition.outcome);
        let granted = decision
            .identity
            .unwrap_or_else(|| panic!("{path}: {:?}", recognition.outcome));
        assert!(pictured.contains(&granted.as_str()), "{path}: {granted}");

        let decoded = frame::decode_image(&support::photo(path), &engine.config.frame).unwrap();
        let faces = recognizer.detect_all(&decoded.image).unwrap();
        let largest = faces
            .iter()
            .max_by(|a, b| a.area().total_cmp(&b.area()))
            .unwrap();
        let embedding = recognizer.embed_face(&decoded.image, largest).unwrap();
        let expected = gallery.best_match(&embedding).unwrap();
        assert_eq!(granted, expected.name, "{path}");
        let score = recognition.outcome.score().unwrap();
        assert!((score - expected.score).abs() < 1e-4, "{path}");
    }
}

#[test]
fn no_face_in_a_group_of_strangers_is_granted() {
    let engine = Engine::get();
    let mut recognizer = engine.recognizer();
    let path = "_group/bald_guys.jpg";
    let recognition = engine.recognize(&mut recognizer, everyone(), path);
    assert_eq!(status(&recognition.outcome), Status::Unknown);
    let decoded = frame::decode_image(&support::photo(path), &engine.config.frame).unwrap();
    for face in recognizer.detect_all(&decoded.image).unwrap() {
        let embedding = recognizer.embed_face(&decoded.image, &face).unwrap();
        let best = everyone().best_match(&embedding).unwrap();
        assert!(
            best.score < engine.threshold,
            "a stranger at {:?} scores {} against {}",
            face.bbox,
            best.score,
            best.name
        );
    }
}

/// Edge images against a gallery of Obama enrolled from obama/obama.jpg.
fn obama_gallery(engine: &Engine, recognizer: &mut Recognizer) -> Gallery {
    engine.gallery_of_first_photos(recognizer, ["obama"])
}

#[test]
fn an_rgba_png_is_decoded_and_granted() {
    let engine = Engine::get();
    let mut recognizer = engine.recognizer();
    let gallery = obama_gallery(engine, &mut recognizer);
    let recognition = engine.recognize(&mut recognizer, &gallery, "_edge/obama_32bit_rgba.png");
    assert_eq!(recognition.header.format, frame::ImageFormat::Png);
    assert_eq!(
        decide_fresh(&recognition.outcome).identity.as_deref(),
        Some("obama"),
        "{:?}",
        recognition.outcome
    );
}

/// facegate decodes PNGs with zune-png, not OpenCV's libpng (docs/performance.md, "PNG decoding"):
/// every PNG of the photo set must come out as the same pixels libpng gives.
#[test]
fn every_png_photo_decodes_to_the_pixels_libpng_gives() {
    use opencv::core::{Mat, MatTraitConst, MatTraitConstManual};
    let engine = Engine::get();
    let pngs: Vec<&str> = support::pinned_photos()
        .iter()
        .map(|p| p.path.as_str())
        .filter(|path| path.ends_with(".png"))
        .collect();
    assert!(
        pngs.len() >= 4,
        "the photo set has RGB and RGBA PNGs: {pngs:?}"
    );
    for path in pngs {
        let bytes = support::photo(path);
        let ours = frame::decode_image(&bytes, &engine.config.frame).unwrap();
        let libpng = opencv::imgcodecs::imdecode(
            &Mat::from_slice(&bytes).unwrap(),
            opencv::imgcodecs::IMREAD_COLOR,
        )
        .unwrap();
        assert_eq!(ours.image.size().unwrap(), libpng.size().unwrap(), "{path}");
        assert_eq!(
            ours.image.data_bytes().unwrap(),
            libpng.data_bytes().unwrap(),
            "{path}: the pixels differ from libpng's"
        );
    }
}

#[test]
fn partial_faces_behave_as_measured() {
    let engine = Engine::get();
    let mut recognizer = engine.recognizer();
    let gallery = obama_gallery(engine, &mut recognizer);
    // Cut at the border but with both eyes in the picture: detected, and still Obama.
    let partial = engine.recognize(&mut recognizer, &gallery, "_edge/obama_partial_face.jpg");
    assert_eq!(partial.faces, 1);
    assert_eq!(
        decide_fresh(&partial.outcome).identity.as_deref(),
        Some("obama"),
        "{:?}",
        partial.outcome
    );
    // Cut further: YuNet finds no face, so the answer is no_face, never a guess.
    let cut = engine.recognize(&mut recognizer, &gallery, "_edge/obama_partial_face2.jpg");
    assert_eq!(cut.faces, 0);
    assert_eq!(status(&cut.outcome), Status::NoFace);
}

#[test]
fn a_240p_frame_is_recognised() {
    let engine = Engine::get();
    let mut recognizer = engine.recognizer();
    let gallery = obama_gallery(engine, &mut recognizer);
    let recognition = engine.recognize(&mut recognizer, &gallery, "_edge/obama-240p.jpg");
    assert_eq!(
        (recognition.header.width, recognition.header.height),
        (427, 240)
    );
    assert_eq!(
        decide_fresh(&recognition.outcome).identity.as_deref(),
        Some("obama"),
        "{:?}",
        recognition.outcome
    );
}

/// The frame before each regression's frame: Obama, granted, through the same recognizer.
fn grant_obama(engine: &Engine, recognizer: &mut Recognizer, gallery: &Gallery) {
    let granted = engine.recognize(recognizer, gallery, "obama/obama2.jpg");
    assert_eq!(
        decide_fresh(&granted.outcome).identity.as_deref(),
        Some("obama")
    );
}

#[test]
fn a_no_face_frame_after_a_granted_frame_is_no_face() {
    let engine = Engine::get();
    let mut recognizer = engine.recognizer();
    let gallery = obama_gallery(engine, &mut recognizer);
    for round in 0..3 {
        grant_obama(engine, &mut recognizer, &gallery);
        let after = engine.recognize(&mut recognizer, &gallery, "_noface/cat.jpg");
        let decision = decide_fresh(&after.outcome);
        assert_eq!(after.faces, 0, "round {round}");
        assert_eq!(
            (
                decision.status,
                decision.identity.clone(),
                decision.may_open()
            ),
            (Status::NoFace, None, false),
            "round {round}"
        );
    }
}

#[test]
fn a_stranger_after_a_granted_frame_is_unknown() {
    let engine = Engine::get();
    let mut recognizer = engine.recognizer();
    let gallery = obama_gallery(engine, &mut recognizer);
    for round in 0..3 {
        grant_obama(engine, &mut recognizer, &gallery);
        let after = engine.recognize(&mut recognizer, &gallery, "_liveness/real_image_T1.jpg");
        let decision = decide_fresh(&after.outcome);
        assert_eq!(
            (
                decision.status,
                decision.identity.clone(),
                decision.may_open()
            ),
            (Status::Unknown, None, false),
            "round {round}: {:?}",
            after.outcome
        );
    }
}

#[test]
fn concurrent_workers_never_receive_each_others_results() {
    const ROUNDS: usize = 12;
    let engine = Engine::get();
    let people = support::people();
    let workers = ["obama", "kit_harington", "john_salley", "deepface_id05"];
    let mut recognizer = engine.recognizer();
    let gallery = Arc::new(engine.gallery_of_first_photos(&mut recognizer, workers));
    // Each worker's probe (a photo that was not enrolled) and the score it gets when alone.
    let probes: Vec<(&str, Vec<u8>, f32)> = workers
        .iter()
        .map(|name| {
            let path = &people[*name][1];
            let alone = engine.recognize(&mut recognizer, &gallery, path);
            assert_eq!(
                decide_fresh(&alone.outcome).identity.as_deref(),
                Some(*name),
                "{path}"
            );
            (*name, support::photo(path), alone.outcome.score().unwrap())
        })
        .collect();
    let start = Arc::new(Barrier::new(workers.len()));
    thread::scope(|scope| {
        for (name, bytes, alone_score) in &probes {
            let gallery = Arc::clone(&gallery);
            let start = Arc::clone(&start);
            scope.spawn(move || {
                let mut recognizer = engine.recognizer();
                start.wait();
                for round in 0..ROUNDS {
                    let recognition = engine
                        .try_recognize(&mut recognizer, &gallery, bytes)
                        .unwrap();
                    let decision = decide_fresh(&recognition.outcome);
                    assert_eq!(
                        decision.identity.as_deref(),
                        Some(*name),
                        "worker {name}, round {round}: {:?}",
                        recognition.outcome
                    );
                    let score = decision.score.unwrap();
                    assert!(
                        (score - alone_score).abs() < 1e-4,
                        "worker {name}, round {round}: score {score}, alone {alone_score}"
                    );
                }
            });
        }
    });
}

/// The shipped MobileFaceNet pads its narrow depthwise convolutions for speed
/// (`scripts/derive-mobilefacenet-opencv46`); galleries enrolled with the rewrite before that keep matching
/// (`gallery_sha256` in the manifest) only because the vectors are the same.
#[test]
fn the_widened_embedder_gives_the_vectors_of_the_loadable_only_rewrite() {
    let engine = Engine::get();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut models = engine.models.clone();
    models.embedder.path = engine.loadable_only_embedder(dir.path());
    let mut loadable_only = Recognizer::load(&models, &engine.config.recognition)
        .expect("the loadable-only rewrite loads");
    let mut shipped = engine.recognizer();
    for photos in support::people().values() {
        let image = support::photo_pixels(&photos[0]);
        let faces = shipped.detect_all(&image).expect("detection runs");
        let face = faces
            .iter()
            .max_by(|a, b| a.bbox[2].total_cmp(&b.bbox[2]))
            .unwrap_or_else(|| panic!("a face in {}", photos[0]));
        let widened = shipped.embed_face(&image, face).expect("embeds");
        let plain = loadable_only.embed_face(&image, face).expect("embeds");
        let similarity = widened.cosine(&plain);
        assert!(
            similarity > 0.999_99,
            "{}: cosine {similarity} between the shipped and the loadable-only embedder",
            photos[0]
        );
    }
}
