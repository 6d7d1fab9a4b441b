//! Paired tablets end to end: `facegate tablets add/list/revoke` on the state dir of a running daemon,
//! `POST /kiosk/pair` and `GET /kiosk/hello` over loopback, the device token as the bearer of frame
//! posts, the tablet named in answers and audit lines, and `door.confirm_frames` kept per tablet.

mod harness;

use serde_json::{json, Value};

use harness::{bearer, photo, wait_for, wait_for_audit, Daemon, Reply, Setup, GRANTED_PHOTO};

/// `facegate tablets add NAME` against the daemon's config; returns the pairing secret of the link.
fn add(daemon: &Daemon, name: &str) -> String {
    let finished = daemon.setup().run(&["tablets", "add", name]);
    assert!(finished.status.success(), "{finished:?}");
    let link = finished
        .stdout
        .lines()
        .find(|line| line.contains("/kiosk/#pair="))
        .unwrap_or_else(|| panic!("no pairing link printed: {finished:?}"));
    assert!(link.starts_with("http://") && link.contains(":"), "{link}");
    assert!(
        finished.stdout.contains('█'),
        "a QR code in the terminal: {finished:?}"
    );
    link.rsplit_once("#pair=").unwrap().1.trim().to_string()
}

fn pair(daemon: &Daemon, secret: &str) -> Reply {
    let body = json!({ "secret": secret }).to_string();
    daemon.send(
        "POST",
        "/kiosk/pair",
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    )
}

/// Regression: every wrong secret logged a line of its own, and `/kiosk/pair` needs no credential, so
/// a stranger could flood the journal's queue and push out the decisions' lines.
#[test]
fn a_flood_of_wrong_pairing_secrets_logs_one_line_per_ten_seconds() {
    let daemon = Setup::new().serve();
    let secret = add(&daemon, "front");
    let flood_started = std::time::Instant::now();
    for _ in 0..30 {
        assert_eq!(
            error_of(&pair(&daemon, "not-the-secret")),
            (401, json!("pairing_invalid"))
        );
    }
    let flood_took = flood_started.elapsed();
    // The log is one queue: once the real pairing's line is out, every refusal's line is too.
    assert_eq!(pair(&daemon, &secret).status, 200);
    daemon.wait_for_log(&["tablet front paired"]);
    let refusal_lines = daemon
        .logs()
        .iter()
        .filter(|line| line.contains("pairing refused"))
        .count();
    let intervals_begun = 1 + flood_took.as_secs() as usize / 10;
    assert!(
        (1..=intervals_begun).contains(&refusal_lines),
        "{refusal_lines} lines for 30 refusals in {flood_took:?}"
    );
}

fn hello(daemon: &Daemon, token: &str) -> Reply {
    let bearer = format!("Bearer {token}");
    daemon.send("GET", "/kiosk/hello", &[("Authorization", &bearer)], b"")
}

fn post_frame(daemon: &Daemon, token: &str, photo_path: &str) -> Reply {
    let bearer = format!("Bearer {token}");
    daemon.send(
        "POST",
        "/image",
        &[("Authorization", &bearer), ("Content-Type", "image/jpeg")],
        &photo(photo_path),
    )
}

fn list(daemon: &Daemon) -> String {
    let finished = daemon.setup().run(&["tablets", "list"]);
    assert!(finished.status.success(), "{finished:?}");
    finished.stdout
}

fn error_of(reply: &Reply) -> (u16, Value) {
    (reply.status, reply.json()["error"].clone())
}

#[test]
fn a_tablet_pairs_posts_frames_under_its_name_and_stops_at_once_when_revoked() {
    let daemon = Setup::new().serve();
    let secret = add(&daemon, "front");
    assert!(secret.len() >= 22, "128 bits or more: {secret}");

    assert_eq!(
        error_of(&pair(&daemon, "not-the-secret")),
        (401, json!("pairing_invalid"))
    );
    let paired = pair(&daemon, &secret);
    assert_eq!(paired.status, 200, "{}", paired.text());
    let answer = paired.json();
    assert_eq!(answer["tablet"], "front", "{answer}");
    let token = answer["token"].as_str().unwrap().to_string();
    assert_eq!(
        token.len(),
        43,
        "256 bits, URL-safe base64 unpadded: {token}"
    );
    assert!(
        token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "{token}"
    );
    assert_eq!(
        error_of(&pair(&daemon, &secret)),
        (401, json!("pairing_invalid")),
        "a pairing secret works once"
    );
    let stored = std::fs::read_to_string(daemon.state_dir().join("tablets.json")).unwrap();
    assert!(
        !stored.contains(&token) && !stored.contains(&secret),
        "{stored}"
    );

    let greeted = hello(&daemon, &token);
    assert_eq!(
        (greeted.status, greeted.json()),
        (200, json!({"tablet": "front"}))
    );
    let answer = post_frame(&daemon, &token, GRANTED_PHOTO).json();
    assert_eq!(
        (&answer["status"], &answer["identity"], &answer["tablet"]),
        (&json!("granted"), &json!("obama"), &json!("front")),
        "{answer}"
    );
    let id = answer["request_id"].as_str().unwrap();
    let audited = wait_for_audit(&daemon, "decision", id);
    assert_eq!(audited["tablet"], "front", "{audited}");
    let event = daemon.get("/events?limit=5").json();
    assert!(
        event["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["request_id"] == id && e["tablet"] == "front"),
        "{event}"
    );
    // The shared token keeps working, and names no tablet.
    let shared = daemon.send(
        "POST",
        "/image",
        &[("Authorization", &bearer()), ("Content-Type", "image/jpeg")],
        &photo(GRANTED_PHOTO),
    );
    assert_eq!(shared.status, 200, "{}", shared.text());
    assert!(shared.json().get("tablet").is_none(), "{}", shared.text());
    // The shared token passes hello too, as no tablet.
    let shared_hello = daemon.get("/kiosk/hello");
    assert_eq!(
        (shared_hello.status, shared_hello.json()),
        (200, json!({"tablet": null}))
    );
    // A device token opens the tablet's endpoints only.
    let bearer_token = format!("Bearer {token}");
    let metrics = daemon.send("GET", "/metrics", &[("Authorization", &bearer_token)], b"");
    assert_eq!(error_of(&metrics), (401, json!("unauthorized")));

    // The daemon notes when and from where the tablet was last seen; the CLI lists it.
    let listed = wait_for("the tablet's last address in the list", || {
        let text = list(&daemon);
        text.contains("127.0.0.1").then_some(text)
    });
    let row = listed.lines().find(|l| l.starts_with("front")).unwrap();
    assert!(row.contains("UTC") && !row.contains("waiting"), "{listed}");

    let revoked = daemon.setup().run(&["tablets", "revoke", "front"]);
    assert!(revoked.status.success(), "{revoked:?}");
    // At once: the very next requests are refused.
    assert_eq!(error_of(&hello(&daemon, &token)), (401, json!("unpaired")));
    let refused = post_frame(&daemon, &token, GRANTED_PHOTO);
    assert_eq!(error_of(&refused), (401, json!("unpaired")));
    assert!(list(&daemon).contains("no tablets"));
    // A wrong shared token keeps its own error.
    let wrong = daemon.send(
        "POST",
        "/image",
        &[
            ("Authorization", "Bearer wrong"),
            ("Content-Type", "image/jpeg"),
        ],
        b"x",
    );
    assert_eq!(error_of(&wrong), (401, json!("unauthorized")));
}

#[test]
fn a_pairing_link_expires_after_ten_minutes() {
    let daemon = Setup::new().serve();
    let secret = add(&daemon, "front");
    // Ten minutes pass: the link's expiry, as the CLI wrote it, moves into the past.
    let path = daemon.state_dir().join("tablets.json");
    let mut stored: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let tablet = &mut stored["tablets"]["front"];
    let time = |value: &Value| -> chrono::DateTime<chrono::Utc> {
        serde_json::from_value(value.clone()).unwrap()
    };
    let valid = time(&tablet["pairing"]["expires_at"]) - time(&tablet["added_at"]);
    assert_eq!(valid, chrono::TimeDelta::minutes(10));
    tablet["pairing"]["expires_at"] = json!(chrono::Utc::now() - chrono::TimeDelta::seconds(1));
    std::fs::write(&path, stored.to_string()).unwrap();
    assert_eq!(
        error_of(&pair(&daemon, &secret)),
        (401, json!("pairing_invalid"))
    );
    assert!(list(&daemon).contains("link expired"), "{}", list(&daemon));
    // A new link for the same name works.
    let again = add(&daemon, "front");
    assert_eq!(pair(&daemon, &again).status, 200);
}

#[test]
fn confirmation_counts_the_frames_of_each_paired_tablet_apart() {
    let daemon = Setup::new()
        .set("door.confirm_frames", 2)
        .set("door.confirm_window_ms", 60_000)
        .serve();
    let front = pair(&daemon, &add(&daemon, "front")).json()["token"]
        .as_str()
        .unwrap()
        .to_string();
    let first = post_frame(&daemon, &front, GRANTED_PHOTO).json();
    assert_eq!(
        (&first["door"], &first["tablet"]),
        (&json!("confirming"), &json!("front")),
        "{first}"
    );
    // Another client at the same address, even one claiming the tablet's name, has its own streak.
    let claiming = daemon.send(
        "POST",
        "/image",
        &[
            ("Authorization", &bearer()),
            ("Content-Type", "application/json"),
        ],
        json!({
            "image": base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                photo(GRANTED_PHOTO)
            ),
            "tablet_id": "front",
        })
        .to_string()
        .as_bytes(),
    );
    assert_eq!(claiming.json()["door"], "confirming", "{}", claiming.text());
    let second = post_frame(&daemon, &front, GRANTED_PHOTO).json();
    assert_eq!(
        (&second["status"], &second["door"], &second["tablet"]),
        (&json!("granted"), &json!("opened"), &json!("front")),
        "{second}"
    );
    daemon.wait_for_journal("the confirmed grant's unlock", |j| {
        j.iter().filter(|a| a.is_unlocked()).count() == 1
    });
}

#[test]
fn tls_cert_prints_the_doors_ca_and_new_names_keep_the_pin() {
    let setup = Setup::new().set("http.tls.enabled", true);
    let run = |setup: &Setup, args: &[&str]| {
        let finished = setup.run(args);
        assert!(finished.status.success(), "{finished:?}");
        finished.stdout
    };
    let pin = run(&setup, &["tls", "pin"]);
    let ca = run(&setup, &["tls", "cert"]);
    assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"), "{ca}");
    let (_, der) = x509_parser::pem::parse_x509_pem(ca.as_bytes()).unwrap();
    let parsed = der.parse_x509().unwrap();
    assert!(parsed.is_ca(), "a tablet installs it as a CA certificate");

    let setup = setup.set("http.tls.names", vec!["door.example"]);
    assert_eq!(run(&setup, &["tls", "pin"]), pin, "new names, same key");
    assert_eq!(run(&setup, &["tls", "cert"]), ca, "new names, same CA");
    let served = std::fs::read(setup.state_dir().join("tls/cert.pem")).unwrap();
    let (_, leaf) = x509_parser::pem::parse_x509_pem(&served).unwrap();
    let names = facegate::front::tls::certificate_sans(&leaf.contents).unwrap();
    for name in ["localhost", "127.0.0.1", "door.example"] {
        assert!(names.iter().any(|n| n == name), "{name} in {names:?}");
    }
}
