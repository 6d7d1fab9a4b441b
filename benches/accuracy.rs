//! Accuracy figures behind the default threshold: genuine/impostor similarity of the 20 test identities
//! through the production pipeline, EER, rank-1, FAR/FRR at the configured threshold, and the best scores
//! of faces that must never be granted. Run: `cargo bench --bench accuracy` (prints; asserts nothing).

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;

use facegate::frame::{self, CheckedImage};
use facegate::gallery::{Gallery, Sample};
use facegate::vision::{Embedding, Recognizer};

use support::{Engine, ENROLLED_AT};

/// The thresholds shown in the sweep table, besides the configured one.
const SWEEP: [f32; 9] = [0.30, 0.35, 0.38, 0.40, 0.42, 0.45, 0.48, 0.50, 0.55];
/// How many of the closest calls (lowest genuine, highest impostor pairs) are listed.
const LISTED_PAIRS: usize = 5;
/// The group photo whose faces are all strangers to the 20 identities.
const STRANGER_GROUP: &str = "_group/bald_guys.jpg";

struct Embedded {
    path: String,
    person: String,
    embedding: Embedding,
    faces: usize,
}

struct Pair<'a> {
    score: f32,
    a: &'a Embedded,
    b: &'a Embedded,
}

fn main() {
    let engine = Engine::get();
    let mut recognizer = engine.recognizer();
    let (embedded, faceless) = embed_people(engine, &mut recognizer);
    let photo_count = embedded.len() + faceless.len();
    let people = support::people().len();

    println!("facegate accuracy: {people} identities, {photo_count} photos, production pipeline");
    println!(
        "  OpenCV {}.{}, detector {}, embedder {}, configured threshold {:.3}",
        facegate::vision::opencv_version().0,
        facegate::vision::opencv_version().1,
        engine.models.detector.name,
        engine.models.embedder.name,
        engine.threshold
    );
    println!(
        "  decode_target_side {}, detect_max_side {}, detect_score_threshold {}, min_face_px {}",
        engine.config.frame.decode_target_side,
        engine.config.recognition.detect_max_side,
        engine.config.recognition.detect_score_threshold,
        engine.config.recognition.min_face_px
    );
    println!(
        "  {} photos embedded (largest face), {} without a face: {:?}",
        embedded.len(),
        faceless.len(),
        faceless
    );
    let several: Vec<String> = embedded
        .iter()
        .filter(|e| e.faces > 1)
        .map(|e| format!("{} ({} faces)", e.path, e.faces))
        .collect();
    println!("  photos with more than one face (largest taken): {several:?}");

    let (genuine, impostor) = pairs(&embedded);
    let genuine_scores = sorted_scores(&genuine);
    let impostor_scores = sorted_scores(&impostor);
    println!();
    print_pair_stats(&genuine_scores, &impostor_scores);
    print_separation(&genuine_scores, &impostor_scores, engine.threshold);
    print_sweep(&genuine_scores, &impostor_scores, engine.threshold);
    print_rank_one(&embedded);
    print_first_photo_identification(&embedded, engine.threshold);
    print_closest_calls(&genuine, &impostor);

    let gallery = gallery_of_everyone(engine, &embedded);
    println!();
    println!(
        "never-grant faces vs the gallery of all {} photos of the {people} identities (threshold {:.3}):",
        embedded.len(),
        engine.threshold
    );
    let mut negatives: Vec<String> = ["_noface", "_hard_negative", "_liveness"]
        .into_iter()
        .flat_map(support::category)
        .collect();
    negatives.push(STRANGER_GROUP.to_string());
    let mut overall: Option<(f32, String)> = None;
    for path in negatives {
        let scores = every_face_best_match(&mut recognizer, &gallery, &path, engine);
        match scores.iter().max_by(|a, b| a.0.total_cmp(&b.0)) {
            None => println!("  {path:<44} no face"),
            Some((score, name)) => {
                let verdict = if *score >= engine.threshold {
                    "WOULD BE GRANTED"
                } else {
                    "below threshold"
                };
                println!(
                    "  {path:<44} {} face(s), best {score:.3} ({name}) {verdict}",
                    scores.len()
                );
                if overall.as_ref().is_none_or(|(best, _)| score > best) {
                    overall = Some((*score, format!("{path} vs {name}")));
                }
            }
        }
    }
    if let Some((score, what)) = overall {
        println!("  highest never-grant score: {score:.3} ({what})");
    }
}

/// The largest face of every identity photo, decoded and embedded exactly as a frame would be.
fn embed_people(engine: &Engine, recognizer: &mut Recognizer) -> (Vec<Embedded>, Vec<String>) {
    let mut embedded = Vec::new();
    let mut faceless = Vec::new();
    for (person, paths) in support::people() {
        for path in paths {
            let bytes = support::photo(&path);
            let image = CheckedImage::check(bytes, &engine.config.frame)
                .unwrap_or_else(|refused| panic!("{path} is refused: {}", refused.error));
            let decoded = image
                .decode()
                .unwrap_or_else(|err| panic!("{path} does not decode: {err}"));
            let sighting = recognizer
                .look_finer(&decoded.image, || image.decode_finer())
                .unwrap_or_else(|err| panic!("{path}: the pipeline failed: {err}"));
            match sighting.primary {
                Some(reading) => embedded.push(Embedded {
                    path,
                    person: person.clone(),
                    embedding: reading.embedding,
                    faces: sighting.faces,
                }),
                None => faceless.push(path),
            }
        }
    }
    (embedded, faceless)
}

fn pairs(embedded: &[Embedded]) -> (Vec<Pair<'_>>, Vec<Pair<'_>>) {
    let mut genuine = Vec::new();
    let mut impostor = Vec::new();
    for (i, a) in embedded.iter().enumerate() {
        for b in &embedded[i + 1..] {
            let pair = Pair {
                score: a.embedding.cosine(&b.embedding),
                a,
                b,
            };
            if a.person == b.person {
                genuine.push(pair);
            } else {
                impostor.push(pair);
            }
        }
    }
    (genuine, impostor)
}

fn sorted_scores(pairs: &[Pair<'_>]) -> Vec<f32> {
    let mut scores: Vec<f32> = pairs.iter().map(|p| p.score).collect();
    scores.sort_by(f32::total_cmp);
    scores
}

/// Nearest-rank percentile of ascending `sorted`.
fn percentile(sorted: &[f32], percent: f64) -> f32 {
    let rank = (percent / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn mean(values: &[f32]) -> f32 {
    values.iter().sum::<f32>() / values.len() as f32
}

/// Share of genuine pairs refused and impostor pairs accepted at `threshold` (a grant is score >= threshold).
fn frr_far(genuine: &[f32], impostor: &[f32], threshold: f32) -> (f64, f64) {
    let refused = genuine.iter().filter(|&&s| s < threshold).count();
    let accepted = impostor.iter().filter(|&&s| s >= threshold).count();
    (
        refused as f64 / genuine.len() as f64,
        accepted as f64 / impostor.len() as f64,
    )
}

fn print_pair_stats(genuine: &[f32], impostor: &[f32]) {
    println!("pair similarities (cosine):");
    println!(
        "  genuine  (same person)       n {:>5}  mean {:.3}  min {:.3}  p5  {:.3}",
        genuine.len(),
        mean(genuine),
        genuine[0],
        percentile(genuine, 5.0)
    );
    println!(
        "  impostor (different people) n {:>5}  mean {:.3}  max {:.3}  p99 {:.3}",
        impostor.len(),
        mean(impostor),
        impostor[impostor.len() - 1],
        percentile(impostor, 99.0)
    );
}

fn print_separation(genuine: &[f32], impostor: &[f32], configured: f32) {
    let lowest_genuine = genuine[0];
    let highest_impostor = impostor[impostor.len() - 1];
    let gap = lowest_genuine - highest_impostor;
    println!("  gap (lowest genuine - highest impostor): {gap:+.3}");
    if gap > 0.0 {
        println!(
            "  separating thresholds: above {highest_impostor:.3} and up to {lowest_genuine:.3} (grant is score >= threshold)"
        );
    } else {
        println!("  no threshold separates them");
    }
    println!(
        "  configured threshold {configured:.3} is {} the highest impostor and {} the lowest genuine",
        above_or_below(configured - highest_impostor),
        above_or_below(configured - lowest_genuine)
    );
    let mut candidates: Vec<f32> = genuine.iter().chain(impostor).copied().collect();
    candidates.sort_by(f32::total_cmp);
    let (eer, at) = candidates
        .iter()
        .map(|&t| {
            let (frr, far) = frr_far(genuine, impostor, t);
            ((frr - far).abs(), (frr + far) / 2.0, t)
        })
        .min_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)))
        .map(|(_, eer, t)| (eer, t))
        .expect("there are pairs");
    println!("  EER {:.2} % (at threshold {at:.3})", eer * 100.0);
}

fn above_or_below(difference: f32) -> String {
    if difference >= 0.0 {
        format!("{difference:.3} above")
    } else {
        format!("{:.3} below", -difference)
    }
}

fn print_sweep(genuine: &[f32], impostor: &[f32], configured: f32) {
    let mut thresholds: Vec<f32> = SWEEP.to_vec();
    if !thresholds.iter().any(|t| (t - configured).abs() < 1e-6) {
        thresholds.push(configured);
        thresholds.sort_by(f32::total_cmp);
    }
    println!("  threshold   FRR (genuine refused)      FAR (impostor accepted)");
    for t in thresholds {
        let (frr, far) = frr_far(genuine, impostor, t);
        let refused = (frr * genuine.len() as f64).round();
        let accepted = (far * impostor.len() as f64).round();
        let mark = if (t - configured).abs() < 1e-6 {
            "  <- configured"
        } else {
            ""
        };
        println!(
            "  {t:.3}       {:>6.2} % ({refused:>3}/{})      {:>6.3} % ({accepted:>3}/{}){mark}",
            frr * 100.0,
            genuine.len(),
            far * 100.0,
            impostor.len()
        );
    }
}

/// Each photo against all the others: is its most similar photo of the same person?
fn print_rank_one(embedded: &[Embedded]) {
    let mut misses = Vec::new();
    for (i, probe) in embedded.iter().enumerate() {
        let nearest = embedded
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .max_by(|(_, a), (_, b)| {
                probe
                    .embedding
                    .cosine(&a.embedding)
                    .total_cmp(&probe.embedding.cosine(&b.embedding))
            })
            .map(|(_, e)| e)
            .expect("more than one photo");
        if nearest.person != probe.person {
            misses.push(format!("{} -> {}", probe.path, nearest.path));
        }
    }
    let hits = embedded.len() - misses.len();
    println!(
        "leave-one-out rank-1 (each photo vs all others): {hits}/{} = {:.1} %{}",
        embedded.len(),
        hits as f64 * 100.0 / embedded.len() as f64,
        if misses.is_empty() {
            String::new()
        } else {
            format!(", misses: {misses:?}")
        }
    );
}

/// The integration test's protocol: enrol each person's first photo, identify the rest at the threshold.
fn print_first_photo_identification(embedded: &[Embedded], threshold: f32) {
    let mut first: BTreeMap<&str, &Embedded> = BTreeMap::new();
    for e in embedded {
        first.entry(&e.person).or_insert(e);
    }
    let mut granted = 0;
    let mut failures = Vec::new();
    let probes: Vec<&Embedded> = embedded
        .iter()
        .filter(|e| !std::ptr::eq(first[e.person.as_str()], *e))
        .collect();
    for probe in &probes {
        let (best_person, best_score) = first
            .iter()
            .map(|(person, enrolled)| (*person, probe.embedding.cosine(&enrolled.embedding)))
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .expect("people are enrolled");
        if best_person == probe.person && best_score >= threshold {
            granted += 1;
        } else {
            failures.push(format!("{} -> {best_person} {best_score:.3}", probe.path));
        }
    }
    println!(
        "first photo enrolled, others identified at {threshold:.3}: {granted}/{} granted as the right person{}",
        probes.len(),
        if failures.is_empty() {
            String::new()
        } else {
            format!(", not: {failures:?}")
        }
    );
}

fn print_closest_calls(genuine: &[Pair<'_>], impostor: &[Pair<'_>]) {
    let mut lowest: Vec<&Pair> = genuine.iter().collect();
    lowest.sort_by(|a, b| a.score.total_cmp(&b.score));
    println!("lowest genuine pairs:");
    for pair in lowest.iter().take(LISTED_PAIRS) {
        println!("  {:.3}  {}  {}", pair.score, pair.a.path, pair.b.path);
    }
    let mut highest: Vec<&Pair> = impostor.iter().collect();
    highest.sort_by(|a, b| b.score.total_cmp(&a.score));
    println!("highest impostor pairs:");
    for pair in highest.iter().take(LISTED_PAIRS) {
        println!("  {:.3}  {}  {}", pair.score, pair.a.path, pair.b.path);
    }
}

fn gallery_of_everyone(engine: &Engine, embedded: &[Embedded]) -> Gallery {
    let mut gallery = engine.empty_gallery();
    for e in embedded {
        gallery
            .add_sample(
                &e.person,
                Sample {
                    source: support::file_name(&e.path).to_string(),
                    enrolled_at: ENROLLED_AT.to_string(),
                    vector: e.embedding.as_slice().to_vec(),
                    thumbnail: None,
                },
            )
            .expect("a valid sample");
    }
    gallery
}

/// Every face the detector finds in the photo, each with its best gallery match.
fn every_face_best_match(
    recognizer: &mut Recognizer,
    gallery: &Gallery,
    path: &str,
    engine: &Engine,
) -> Vec<(f32, String)> {
    let decoded = frame::decode_image(&support::photo(path), &engine.config.frame)
        .unwrap_or_else(|err| panic!("{path} does not decode: {err}"));
    let faces = recognizer
        .detect_all(&decoded.image)
        .unwrap_or_else(|err| panic!("{path}: detection failed: {err}"));
    faces
        .iter()
        .map(|face| {
            let embedding = recognizer
                .embed_face(&decoded.image, face)
                .unwrap_or_else(|err| panic!("{path}: embedding failed: {err}"));
            let best = gallery
                .best_match(&embedding)
                .expect("the gallery is not empty");
            (best.score, best.name)
        })
        .collect()
}
