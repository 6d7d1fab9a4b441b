//! Tilted heads (issue 11) on real models and photos: every photo of the 20 identities turned by ±15° and
//! ±30° in the image plane is answered as upright (the same person), and turning never makes a stranger
//! pass. Without the upright second look (`recognition.max_roll_deg = 90`), YuNet's landmarks on some
//! turned faces give embeddings far from the person's.

mod support;

use std::collections::BTreeMap;

use opencv::core::Mat;

use facegate::decision::Outcome;
use facegate::frame;
use facegate::gallery::Gallery;
use facegate::vision::Recognizer;

use support::{decide_fresh, turned, Engine};

const TURNS: [f64; 4] = [-30.0, -15.0, 15.0, 30.0];

/// Who the largest face in `image` is granted as, if anyone, and the outcome.
fn granted_as(
    engine: &Engine,
    recognizer: &mut Recognizer,
    gallery: &Gallery,
    image: &Mat,
) -> (Option<String>, Outcome) {
    let sighting = recognizer.look(image).unwrap();
    let outcome = match &sighting.primary {
        None => Outcome::NoFace,
        Some(reading) => {
            Outcome::for_face(gallery.best_match(&reading.embedding), engine.threshold)
        }
    };
    (decide_fresh(&outcome).identity, outcome)
}

fn decoded_photos(engine: &Engine) -> BTreeMap<String, (String, Mat)> {
    support::people()
        .into_iter()
        .flat_map(|(person, paths)| paths.into_iter().map(move |p| (p, person.clone())))
        .map(|(path, person)| {
            let decoded =
                frame::decode_image(&support::photo(&path), &engine.config.frame).unwrap();
            (path, (person, decoded.image))
        })
        .collect()
}

/// Turned photos in which YuNet finds no face at its 0.9 score, so the answer is `no_face`, never a
/// guess: 42 of the 50 turns by ±15° of the 25 dlib 150x150 chips (john_*), whose head touches the top
/// edge, score 0.83-0.88 (upright and at ±30° they score 1.00); and rose_leslie/img1 turned by 30°.
fn undetected_when_turned(path: &str, degrees: f64) -> bool {
    (path.starts_with("john_s") && degrees.abs() == 15.0)
        || (path, degrees) == ("rose_leslie/img1.jpg", 30.0)
}

/// Turned photos that are found but refused (unknown), never granted as anyone else.
const REFUSED_WHEN_TURNED: [(&str, f64); 1] = [("deepface_id03/img51.jpg", 30.0)];

#[test]
fn turned_faces_are_granted_as_upright_and_never_as_anyone_else() {
    let engine = Engine::get();
    // Pinned on one full 640 pass, as before the quick pass at 320 became the default (issue 20): with
    // the quick pass's landmarks deepface_id04/img3.jpg is granted upright (0.49) but not turned by -30°
    // (0.42), which this test's rule "granted upright, granted turned" would count as a new refusal.
    let mut settings = engine.config.recognition.clone();
    settings.coarse_detect_side = 0;
    let mut recognizer = Recognizer::load(&engine.models, &settings).expect("models load");
    let people = support::people();
    let gallery =
        engine.gallery_of_first_photos(&mut recognizer, people.keys().map(String::as_str));
    let (mut granted, mut undetected, mut refused) = (0, 0, Vec::new());
    for (path, (person, image)) in decoded_photos(engine) {
        let (upright, upright_outcome) = granted_as(engine, &mut recognizer, &gallery, &image);
        for degrees in TURNS {
            let (who, outcome) =
                granted_as(engine, &mut recognizer, &gallery, &turned(&image, degrees));
            match (&who, &outcome) {
                (Some(name), _) => {
                    assert_eq!(name, &person, "{path} turned {degrees}°: {outcome:?}");
                    granted += 1;
                }
                (None, Outcome::NoFace) => {
                    assert!(
                        undetected_when_turned(&path, degrees),
                        "{path} turned {degrees}°: no face"
                    );
                    undetected += 1;
                }
                (None, _) => {
                    // Refused although upright it is granted: only the known cases.
                    if upright.is_some() {
                        assert!(
                            REFUSED_WHEN_TURNED.contains(&(path.as_str(), degrees)),
                            "{path} turned {degrees}°: {outcome:?}, upright {upright_outcome:?}"
                        );
                    }
                    refused.push((path.clone(), degrees));
                }
            }
        }
    }
    println!("turned: {granted} granted as themselves, {undetected} no face, refused {refused:?}");
    assert_eq!(undetected, 43, "turned photos without a face");
    assert_eq!(granted + undetected + refused.len(), 81 * TURNS.len());
}

/// Regression: obama/obama2.jpg (already tilted by itself) turned 30° further counter-clockwise gave
/// YuNet landmarks that scored 0.13 against Obama's own enrolment, and he was answered unknown.
#[test]
fn a_tilted_photo_turned_further_is_still_granted() {
    let engine = Engine::get();
    let mut recognizer = engine.recognizer();
    let gallery = engine.gallery_of_first_photos(&mut recognizer, ["obama"]);
    let decoded =
        frame::decode_image(&support::photo("obama/obama2.jpg"), &engine.config.frame).unwrap();
    let (who, outcome) = granted_as(
        engine,
        &mut recognizer,
        &gallery,
        &turned(&decoded.image, -30.0),
    );
    assert_eq!(who.as_deref(), Some("obama"), "{outcome:?}");
    assert!(outcome.score().unwrap() > 0.65, "{outcome:?}");
}

#[test]
fn turned_strangers_are_never_granted() {
    let engine = Engine::get();
    let mut recognizer = engine.recognizer();
    let people = support::people();
    let gallery =
        engine.gallery_of_first_photos(&mut recognizer, people.keys().map(String::as_str));
    let strangers = support::category("_liveness")
        .into_iter()
        .chain(["_group/bald_guys.jpg".to_string()]);
    for path in strangers {
        let decoded = frame::decode_image(&support::photo(&path), &engine.config.frame).unwrap();
        for degrees in TURNS {
            let (who, outcome) = granted_as(
                engine,
                &mut recognizer,
                &gallery,
                &turned(&decoded.image, degrees),
            );
            assert_eq!(who, None, "{path} turned {degrees}°: {outcome:?}");
        }
    }
}
