//! The fuzz targets of `fuzz/` as plain tests, inside `cargo test` (scripts/fuzz runs them
//! coverage-guided under libFuzzer afterwards): each target's function from fuzz/src/lib.rs over its
//! seeds (fuzz/seeds/<target>/), a fixed number of inputs generated from them by a seeded xorshift
//! (bit flips, interesting bytes and tokens, cut, repeated and spliced ranges), and every saved
//! finding (fuzz/regressions/<target>/). Not coverage-guided: a short, repeatable sweep that keeps
//! each parser's code running under odd inputs. A failing input is written to
//! target/fuzz-findings/ and named in the failure; `FUZZ_SEED=<n>` replays another sweep.

// `frame_body` and `config` run in tests/hostile_input.rs, over the hostile-input generator's requests.
#[allow(dead_code)]
#[path = "../fuzz/src/lib.rs"]
mod fuzz_targets;
mod generator;

use std::path::{Path, PathBuf};

use generator::Xorshift;

type Target = fn(&[u8]);

/// Inputs generated per target (on top of its seeds and regressions).
const GENERATED: usize = 20_000;
/// Gallery bundles are signed and verified (Ed25519, unoptimised in tests): fewer of them.
const GENERATED_BUNDLES: usize = 400;
const DEFAULT_SEED: u64 = 0x00fa_ce9a_7e00_0016;
/// Generated inputs stay below this size.
const MAX_LEN: usize = 16 * 1024;

/// Pieces that matter to these parsers, spliced into inputs.
const TOKENS: &[&[u8]] = &[
    b"\r\n",
    b"\r\n\r\n",
    b"\n",
    b"\r",
    b" ",
    b"\t",
    b":",
    b";",
    b"=",
    b"&",
    b"%",
    b"%2",
    b"+",
    b"\"",
    b"\\",
    b"/",
    b"--",
    b"0",
    b"-1",
    b"ffffffffffffffff",
    b"18446744073709551616",
    b"HTTP/1.1",
    b"HTTP/1.0",
    b"HTTP/2.0",
    b"Content-Length",
    b"Transfer-Encoding",
    b"chunked",
    b"Expect",
    b"100-continue",
    b"Connection",
    b"close",
    b"boundary=",
    b"Content-Disposition: form-data; name=\"",
    b"filename=\"",
    b"{",
    b"}",
    b"[",
    b"]",
    b"null",
    b"\"\"",
    b"\\u0000",
    b"1e309",
    b"\"nonce\":\"",
    b"\"issued_at_ms\":",
    b"\"door_id\":\"front\"",
    b"\"action\":\"unlock\"",
    b"\"valid_until\":\"",
    b"\"sequence\":",
    b"\"vector\":[",
    b"\"people\":[",
    b"\xff",
    b"\x00",
    b"\xc3\xa9",
];

/// One to eight mutations of `input`, some splicing in a part of `other`.
fn mutate(rng: &mut Xorshift, input: &[u8], other: &[u8]) -> Vec<u8> {
    let mut data = input.to_vec();
    for _ in 0..1 + rng.below(8) {
        let at = rng.below(data.len() + 1);
        match rng.below(8) {
            0 if !data.is_empty() => {
                let i = rng.below(data.len());
                data[i] ^= 1 << rng.below(8);
            }
            1 if !data.is_empty() => {
                let i = rng.below(data.len());
                data[i] = [0, 0x7f, 0x80, 0xff, b'0', b'9', b'a', b'\r', b'\n'][rng.below(9)];
            }
            2 => {
                let token = TOKENS[rng.below(TOKENS.len())];
                data.splice(at..at, token.iter().copied());
            }
            3 if !data.is_empty() => {
                let end = (at + 1 + rng.below(64)).min(data.len());
                data.drain(at.min(end)..end);
            }
            4 if !data.is_empty() => {
                let start = rng.below(data.len());
                let end = (start + 1 + rng.below(256)).min(data.len());
                let piece = data[start..end].to_vec();
                for _ in 0..1 + rng.below(4) {
                    data.splice(at..at, piece.iter().copied());
                }
            }
            5 => data.truncate(at),
            6 if !other.is_empty() => {
                let start = rng.below(other.len());
                let end = (start + 1 + rng.below(512)).min(other.len());
                data.splice(at..at, other[start..end].iter().copied());
            }
            _ => {
                let noise: Vec<u8> = (0..1 + rng.below(16)).map(|_| rng.next() as u8).collect();
                data.splice(at..at, noise);
            }
        }
        data.truncate(MAX_LEN);
    }
    data
}

fn files_in(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.is_file())
        .map(|path| {
            let bytes = std::fs::read(&path).expect("read a fuzz input");
            (path, bytes)
        })
        .collect();
    files.sort();
    files
}

/// Runs `run` on one input; on a panic, saves the input and fails naming it.
fn check(target: &str, case: &str, run: Target, input: &[u8]) {
    let outcome = std::panic::catch_unwind(|| run(input));
    if let Err(panic) = outcome {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fuzz-findings");
        std::fs::create_dir_all(&dir).expect("findings directory");
        let file = dir.join(format!("{target}-{}", case.replace(['/', ' '], "_")));
        std::fs::write(&file, input).expect("save the finding");
        let message = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        panic!(
            "fuzz target `{target}` failed on {case}: {message}\ninput saved as {} (copy it to fuzz/regressions/{target}/ once fixed)",
            file.display()
        );
    }
}

fn sweep(target: &str, run: Target, generated: usize) {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let seeds = files_in(&fuzz.join("seeds").join(target));
    assert!(!seeds.is_empty(), "fuzz/seeds/{target}/ holds no seed");
    for (path, bytes) in seeds
        .iter()
        .chain(&files_in(&fuzz.join("regressions").join(target)))
    {
        check(target, &path.display().to_string(), run, bytes);
    }
    let seed = generator::seed_from_env("FUZZ_SEED", DEFAULT_SEED);
    let target_seed = seed
        ^ target
            .bytes()
            .fold(0u64, |h, b| h.wrapping_mul(31) ^ u64::from(b));
    for case in 0..generated {
        // Each case replays on its own: `FUZZ_SEED` and the case number name it.
        let mut rng = Xorshift::for_case(target_seed, case);
        let input = &seeds[rng.below(seeds.len())].1;
        let other = &seeds[rng.below(seeds.len())].1;
        let data = mutate(&mut rng, input, other);
        check(target, &format!("seed {seed:#x} case {case}"), run, &data);
    }
}

#[test]
fn head() {
    sweep("head", fuzz_targets::head, GENERATED);
}

#[test]
fn chunked_body() {
    sweep("chunked_body", fuzz_targets::chunked_body, GENERATED);
}

#[test]
fn multipart() {
    sweep("multipart", fuzz_targets::multipart, GENERATED);
}

#[test]
fn admin_form() {
    sweep("admin_form", fuzz_targets::admin_form, GENERATED);
}

#[test]
fn mqtt_command() {
    sweep("mqtt_command", fuzz_targets::mqtt_command, GENERATED);
}

#[test]
fn gallery_bundle() {
    sweep(
        "gallery_bundle",
        fuzz_targets::gallery_bundle,
        GENERATED_BUNDLES,
    );
}

#[test]
fn the_seeds_reach_past_the_first_checks() {
    // A seed set that every target refuses at once would sweep nothing of interest.
    let signed = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/gallery_bundle/bundle"),
    )
    .unwrap();
    let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let opened = facegate::gallery_bundle::open(
        &facegate::gallery_bundle::sign(&signed, &key),
        Some(&key.verifying_key()),
        &fuzz_targets::bundle_embedder(),
        Path::new("seed"),
    )
    .expect("the bundle seed opens");
    assert_eq!(opened.gallery.people().len(), 2);
    let body = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/mqtt_command/body-unlock"),
    )
    .unwrap();
    let envelope = facegate::fuzzing::signed_command_text(&body);
    let [first, second] =
        facegate::fuzzing::verify_command_twice(envelope.as_bytes(), fuzz_targets::COMMAND_NOW_MS);
    assert!(first.is_ok(), "{first:?}");
    assert_eq!(second.map(|_| ()), Err("replayed"));
}
