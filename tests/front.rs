//! The connection front against the real binary on loopback (issues 9 and 16): other HTTP versions
//! leave no thread or descriptor behind, idle and slow clients do not starve the tablet, at the
//! connection limit clients without a credential make room and busy credentialed ones refuse the next
//! (counted), no number of strangers shuts out the tablet or the self-probe, bodies in flight stay
//! under one budget, head deadlines hold over TLS, and the tablet's contract holds over TLS with the
//! certificate's key pinned.

mod harness;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::Value;

use harness::{
    bearer, photo, read_reply, wait_for, Daemon, Reply, Setup, GRANTED_PHOTO, STRANGER_PHOTO,
};

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The daemon's thread count and open descriptors, from /proc.
fn threads_and_descriptors(daemon: &Daemon) -> (usize, usize) {
    let pid = daemon.pid();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the daemon runs");
    let threads = status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("a Threads line");
    let descriptors = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("the daemon's descriptors")
        .count();
    (threads, descriptors)
}

/// A keep-alive POST or GET as the tablet's OkHttp client sends it.
fn tablet_request(method: &str, path: &str, body: &[u8]) -> Vec<u8> {
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: facegate\r\nAuthorization: {}\r\nContent-Length: {}\r\n\r\n",
        bearer(),
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    request
}

fn exchange(stream: &mut (impl Read + Write), request: &[u8]) -> Reply {
    stream.write_all(request).expect("send the request");
    stream.flush().expect("send the request");
    read_reply(stream)
}

/// Reads until the daemon closes; fails the test if that takes longer than `limit`.
fn read_to_close(stream: &mut TcpStream, limit: Duration) -> Vec<u8> {
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut received = Vec::new();
    match stream.read_to_end(&mut received) {
        Ok(_) => {}
        Err(err) if err.kind() == ErrorKind::ConnectionReset => {}
        Err(err) => panic!(
            "the connection was not closed within {limit:?} ({err}); received {:?}",
            String::from_utf8_lossy(&received)
        ),
    }
    received
}

fn assert_granted(reply: &Reply) {
    let answer = reply.json();
    assert_eq!(reply.status, 200, "{answer}");
    assert_eq!(answer["status"], "granted", "{answer}");
}

fn assert_started_once(daemon: &Daemon) {
    let starts = daemon
        .logs()
        .iter()
        .filter(|l| l.contains("facegate listening on"))
        .count();
    assert_eq!(starts, 1, "the daemon restarted");
}

const VERSION_CASES: usize = 2_000;
const VERSION_CLIENTS: usize = 4;

/// Regression: HTTP/2.0 request lines and h2c prefaces deadlocked tiny_http's connection threads; 600 of
/// them took the daemon from 14 to 611 threads and 8 to 1,208 descriptors for good, then the descriptor
/// alarm restarted it.
#[test]
fn http2_request_lines_and_prefaces_are_refused_and_leave_nothing_behind() {
    let daemon = Setup::new().serve();
    assert_eq!(daemon.get("/healthz").status, 200);
    std::thread::sleep(Duration::from_millis(300));
    let (idle_threads, idle_descriptors) = threads_and_descriptors(&daemon);
    let requests: [&[u8]; 3] = [
        b"GET /healthz HTTP/2.0\r\nHost: facegate\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"POST /image HTTP/2.0\r\nContent-Length: 4\r\n\r\naGk=",
    ];
    std::thread::scope(|scope| {
        for client in 0..VERSION_CLIENTS {
            let addr = daemon.addr;
            scope.spawn(move || {
                for n in (client..VERSION_CASES).step_by(VERSION_CLIENTS) {
                    let mut stream = TcpStream::connect(addr).expect("connect");
                    stream
                        .write_all(requests[n % requests.len()])
                        .expect("send");
                    let received = read_to_close(&mut stream, Duration::from_secs(10));
                    assert!(
                        received.is_empty() || received.starts_with(b"HTTP/1.1 505 "),
                        "case {n}: {:?}",
                        String::from_utf8_lossy(&received)
                    );
                }
            });
        }
    });
    let settled = Instant::now();
    let (threads, descriptors) = wait_for("threads and descriptors back to idle", || {
        let now = threads_and_descriptors(&daemon);
        (now.0 <= idle_threads && now.1 <= idle_descriptors).then_some(now)
    });
    eprintln!(
        "{VERSION_CASES} HTTP/2.0 requests: idle {idle_threads} threads / {idle_descriptors} descriptors, {threads} / {descriptors} again {:.1} s after the last",
        settled.elapsed().as_secs_f64()
    );
    assert_granted(&daemon.post("/image", b64(&photo(GRANTED_PHOTO)).as_bytes()));
    assert_started_once(&daemon);
}

const IDLE_CONNECTIONS: usize = 500;
const SLOW_UPLOADS: usize = 50;
const TABLET_FRAMES: usize = 20;
const TABLET_INTERVAL: Duration = Duration::from_millis(150);

/// Regression: 300 idle connections and 30 slow authenticated uploads got all 20 of the tablet's frames
/// answered 503 `busy` (slow bodies held the recognition workers).
#[test]
fn idle_connections_and_slow_uploads_do_not_starve_the_tablet() {
    // Deadlines longer than the run, so every idle and slow client stays for all of it.
    let daemon = Setup::new()
        .set("http.head_timeout_ms", 60_000)
        .set("http.body_timeout_ms", 60_000)
        .serve();
    // Eight to an address, the most one address may hold before it shows a credential.
    let idle: Vec<TcpStream> = (0..IDLE_CONNECTIONS)
        .map(|n| {
            harness::connect_from(daemon.addr, [127, 0, 0, 2 + (n / 8) as u8])
                .expect("connect an idle client")
        })
        .collect();
    let done = AtomicBool::new(false);
    let frame = b64(&photo(STRANGER_PHOTO));
    std::thread::scope(|scope| {
        for _ in 0..SLOW_UPLOADS / 10 {
            let (addr, done) = (daemon.addr, &done);
            scope.spawn(move || slow_uploads(addr, 10, done));
        }
        std::thread::sleep(Duration::from_millis(500));
        let mut tablet = TcpStream::connect(daemon.addr).expect("the tablet connects");
        tablet
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        for n in 0..TABLET_FRAMES {
            let sent = Instant::now();
            let reply = exchange(
                &mut tablet,
                &tablet_request("POST", "/image", frame.as_bytes()),
            );
            let answer: Value = reply.json();
            assert_eq!(reply.status, 200, "frame {n}: {answer}");
            assert_eq!(answer["status"], "unknown", "frame {n}: {answer}");
            std::thread::sleep(TABLET_INTERVAL.saturating_sub(sent.elapsed()));
        }
        let metrics = exchange(&mut tablet, &tablet_request("GET", "/metrics", b"")).text();
        let open = counter(&metrics, "facegate_connections_open") as usize;
        assert!(
            open > IDLE_CONNECTIONS,
            "only {open} connections open: the idle clients were not all there"
        );
        done.store(true, Ordering::SeqCst);
    });
    drop(idle);
    assert_started_once(&daemon);
}

/// `count` authenticated uploads that each announce 200 kB and send 100 bytes every 200 ms.
fn slow_uploads(addr: SocketAddr, count: usize, done: &AtomicBool) {
    let head = format!(
        "POST /image HTTP/1.1\r\nHost: facegate\r\nAuthorization: {}\r\nContent-Length: 200000\r\n\r\n",
        bearer()
    );
    let mut streams: Vec<TcpStream> = (0..count)
        .map(|_| {
            let mut stream = TcpStream::connect(addr).expect("connect a slow client");
            stream.write_all(head.as_bytes()).expect("send the head");
            stream
        })
        .collect();
    let started = Instant::now();
    while !done.load(Ordering::SeqCst) && started.elapsed() < Duration::from_secs(60) {
        for stream in &mut streams {
            let _ = stream.write_all(&[b'A'; 100]);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn counter(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in:\n{metrics}"))
}

/// Regression: this failed one run in three on a loaded machine ("closed only after 4.29 s"). The
/// registry judged a connection by its thread's progress: an upload whose head its thread had not yet
/// read still counted as waiting, so the next client was admitted in its place instead of refused, and
/// sat silent until the self-probe's next connection (every 5 s) evicted it in turn. Now the self-probe
/// is let in over the limit and evicts no one, a connection is only kept for a credential its head
/// showed, and the test waits for each upload's `100 Continue` (sent once its head was read and
/// checked) instead of a fixed sleep.
#[test]
fn at_the_connection_limit_strangers_make_room_and_busy_tablets_refuse_the_next() {
    let limit = 4;
    let daemon = Setup::new()
        .set("http.max_connections", limit)
        .set("http.max_connections_without_credential", 2)
        .set("http.body_timeout_ms", 60_000)
        .serve();
    // Silent clients come and go; the tablet still gets in, in place of the longest standing.
    let silent: Vec<TcpStream> = (0..limit)
        .map(|_| TcpStream::connect(daemon.addr).expect("connect"))
        .collect();
    let mut tablet = TcpStream::connect(daemon.addr).expect("the tablet connects");
    tablet
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let frame = b64(&photo(GRANTED_PHOTO));
    assert_granted(&exchange(
        &mut tablet,
        &tablet_request("POST", "/image", frame.as_bytes()),
    ));
    drop((silent, tablet));

    // Clients that hold the token and upload slowly are working: they are not evicted, the next is refused.
    let body = vec![b'A'; 100_000];
    let mut head = tablet_request("POST", "/image", &body);
    head.truncate(head.len() - body.len());
    let continued = b"Expect: 100-continue\r\n\r\n";
    head.truncate(head.len() - 2);
    head.extend_from_slice(continued);
    let uploads: Vec<TcpStream> = (0..limit)
        .map(|_| {
            let mut upload = wait_for("an upload admitted and its head read", || {
                let mut upload = TcpStream::connect(daemon.addr).ok()?;
                upload
                    .set_read_timeout(Some(Duration::from_secs(60)))
                    .ok()?;
                upload.write_all(&head).ok()?;
                let mut answer = [0u8; 25];
                upload.read_exact(&mut answer).ok()?;
                (&answer == b"HTTP/1.1 100 Continue\r\n\r\n").then_some(upload)
            });
            upload.write_all(&body[..50_000]).expect("send half");
            upload
        })
        .collect();
    let mut refused = TcpStream::connect(daemon.addr).expect("the kernel accepts the connection");
    // Waiting for its own deadline (head_timeout_ms, 5 s) would be the defect; under load the close
    // still comes far sooner than 60 s.
    let received = read_to_close(&mut refused, Duration::from_secs(60));
    assert!(
        received.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&received)
    );
    drop(uploads);
    let metrics = wait_for("a free connection for /metrics", || {
        let mut stream = TcpStream::connect(daemon.addr).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        stream
            .write_all(&tablet_request("GET", "/metrics", b""))
            .ok()?;
        let mut first = [0u8; 1];
        stream.peek(&mut first).ok().filter(|&n| n > 0)?;
        Some(read_reply(&mut stream).text())
    });
    assert!(
        counter(&metrics, "facegate_connections_evicted_total") >= 1,
        "{metrics}"
    );
    assert!(
        counter(&metrics, "facegate_connections_refused_total") >= 1,
        "{metrics}"
    );
    assert_started_once(&daemon);
}

/// The loopback address of the `n`th attacking client, four connections to an address.
fn attacker_address(n: usize) -> [u8; 4] {
    [127, 0, 0, 2 + (n / 4) as u8]
}

fn metrics_of(daemon: &Daemon) -> String {
    let reply = daemon.get("/metrics");
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.text()
}

const SLOT_ATTACKERS: usize = 72;
const SLOT_ATTACK_FRAMES: usize = 6;

/// Regression (issue 16): 72 connections without a token, each starting `POST /admin/login` with
/// `Content-Length: 100000` and sending one byte every 0.5 s, with `http.max_connections = 64`, got
/// the tablet's next 6 frames 0 answers: admin and /healthz connections counted as working and were
/// never evicted, and after three failed self-probes the daemon restarted.
#[test]
fn strangers_trickling_admin_logins_never_shut_out_the_tablet_or_the_self_probe() {
    // Deadlines longer than the attack, so that only eviction can make room.
    let daemon = Setup::new()
        .set("http.max_connections", 64)
        .set("http.head_timeout_ms", 60_000)
        .set("http.body_timeout_ms", 60_000)
        .set("http.self_probe_interval_ms", 250)
        .serve();
    let done = AtomicBool::new(false);
    let reconnects = AtomicUsize::new(0);
    let frame = b64(&photo(STRANGER_PHOTO));
    std::thread::scope(|scope| {
        let (addr, done, reconnects) = (daemon.addr, &done, &reconnects);
        scope.spawn(move || {
            // As measured: 100 kB declared (now refused 413 at once); and what a stranger may still
            // try, 10 kB under the 16 KiB cap, trickled.
            let head = |n: usize| {
                let declared = if n.is_multiple_of(2) { 100_000 } else { 10_000 };
                format!("POST /admin/login HTTP/1.1\r\nHost: facegate\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {declared}\r\n\r\n")
            };
            let open = |n: usize| {
                let mut stream = harness::connect_from(addr, attacker_address(n)).ok()?;
                stream.write_all(head(n).as_bytes()).ok()?;
                Some(stream)
            };
            let mut streams: Vec<Option<TcpStream>> = (0..SLOT_ATTACKERS).map(open).collect();
            while !done.load(Ordering::SeqCst) {
                for (n, slot) in streams.iter_mut().enumerate() {
                    let alive = slot.as_mut().is_some_and(|s| s.write_all(b"p").is_ok());
                    if !alive {
                        // Closed (evicted or refused): the attacker comes straight back.
                        reconnects.fetch_add(1, Ordering::Relaxed);
                        *slot = open(n);
                    }
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        });
        wait_for("the strangers to fill their budget", || {
            let metrics = metrics_of(&daemon);
            (counter(&metrics, "facegate_connections_without_credential") >= 32
                && reconnects.load(Ordering::Relaxed) >= SLOT_ATTACKERS)
                .then_some(())
        });
        for n in 0..SLOT_ATTACK_FRAMES {
            let reply = daemon.post("/image", frame.as_bytes());
            let answer = reply.json();
            assert_eq!(reply.status, 200, "frame {n}: {answer}");
            assert_eq!(answer["status"], "unknown", "frame {n}: {answer}");
        }
        let metrics = metrics_of(&daemon);
        eprintln!(
            "{SLOT_ATTACK_FRAMES} of {SLOT_ATTACK_FRAMES} frames answered; {} connections open, {} without a credential, {} evicted, {} attacker reconnections",
            counter(&metrics, "facegate_connections_open"),
            counter(&metrics, "facegate_connections_without_credential"),
            counter(&metrics, "facegate_connections_evicted_total"),
            reconnects.load(Ordering::Relaxed)
        );
        assert!(
            counter(&metrics, "facegate_connections_without_credential") <= 32,
            "{metrics}"
        );
        assert!(
            counter(&metrics, "facegate_connections_evicted_total") > 0,
            "{metrics}"
        );
        done.store(true, Ordering::SeqCst);
    });
    let probe_failures: Vec<String> = daemon
        .logs()
        .into_iter()
        .filter(|l| l.contains("self-probe"))
        .collect();
    assert!(probe_failures.is_empty(), "{probe_failures:#?}");
    assert_started_once(&daemon);
}

const MEMORY_ATTACKERS: usize = 40;
const BODY_BUDGET: u64 = 2 * 1024 * 1024;

/// Regression (issue 16): 40 connections without a token, each sending a 15 MB `/admin/login` body
/// one byte short of complete, took the daemon from 80 MB to 682 MB (each admin body got 60 s and up
/// to `http.max_body_bytes`). Asserted on the daemon's own count of body bytes held, not on RSS.
#[test]
fn large_bodies_one_byte_short_never_pass_the_budget_for_bodies_in_flight() {
    let daemon = Setup::new()
        .set("http.max_body_bytes", 1_048_576)
        .set("http.max_body_bytes_in_flight", BODY_BUDGET as i64)
        .set("http.head_timeout_ms", 60_000)
        .set("http.body_timeout_ms", 60_000)
        .serve();
    // The attack as measured: refused before a byte of its body is held.
    let login = |length: &str| {
        format!("POST /admin/login HTTP/1.1\r\nHost: facegate\r\nContent-Type: application/x-www-form-urlencoded\r\n{length}\r\n\r\n")
    };
    for n in 0..MEMORY_ATTACKERS {
        let mut stream = harness::connect_from(daemon.addr, attacker_address(n)).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        stream
            .write_all(login("Content-Length: 15000000").as_bytes())
            .expect("send the head");
        let reply = read_reply(&mut stream);
        assert_eq!(reply.status, 413, "{}", reply.text());
        assert_eq!(reply.json()["error"], "too_large");
    }
    // What strangers may still hold: chunked bodies just under their 16 KiB cap, never finished.
    let strangers: Vec<TcpStream> = (0..MEMORY_ATTACKERS)
        .filter_map(|n| {
            let mut stream = harness::connect_from(daemon.addr, attacker_address(n)).ok()?;
            let mut request = login("Transfer-Encoding: chunked").into_bytes();
            request.extend_from_slice(b"3e80\r\n");
            request.extend_from_slice(&[b'p'; 16_000]);
            stream.write_all(&request).ok()?;
            Some(stream)
        })
        .collect();
    // A token holder's upload one byte short holds its 900 kB...
    let upload = |length: usize| {
        let mut request = tablet_request("POST", "/image", &vec![b'A'; length]);
        request.pop();
        let mut stream = daemon.connect();
        stream.write_all(&request).expect("send the upload");
        stream
    };
    let held = upload(900_000);
    wait_for("the first upload held", || {
        (counter(&metrics_of(&daemon), "facegate_body_bytes_in_flight") >= 900_000).then_some(())
    });
    // ...the next would pass the budget: 503, Retry-After, JSON.
    let mut over = upload(900_000);
    let reply = read_reply(&mut over);
    assert_eq!(reply.status, 503, "{}", reply.text());
    assert_eq!(reply.header("Retry-After"), Some("1"));
    assert_eq!(reply.json()["error"], "busy");
    // The tablet is still answered.
    let frame = b64(&photo(STRANGER_PHOTO));
    let answer = daemon.post("/image", frame.as_bytes());
    assert_eq!(answer.status, 200, "{}", answer.text());
    let metrics = metrics_of(&daemon);
    let peak = counter(&metrics, "facegate_body_bytes_in_flight_peak");
    eprintln!("bodies in flight peaked at {peak} bytes (budget {BODY_BUDGET})");
    assert!(
        (900_000..=BODY_BUDGET).contains(&peak),
        "peak {peak}:\n{metrics}"
    );
    assert!(counter(&metrics, "facegate_bodies_over_budget_total") >= 1);
    drop((strangers, held));
    assert_started_once(&daemon);
}

/// A TLS client that trusts exactly the server key `pin`.
fn tls_connect(
    addr: SocketAddr,
    pin: &str,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let config = facegate::front::tls::pinned_client_config(pin);
    let name = rustls::pki_types::ServerName::try_from("facegate").unwrap();
    let connection = rustls::ClientConnection::new(config, name).expect("a TLS client");
    let tcp = TcpStream::connect(addr).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    rustls::StreamOwned::new(connection, tcp)
}

#[test]
fn the_tablet_contract_holds_over_https_with_the_pinned_key() {
    // A head deadline far beyond the waits below: a close that waited for it would be the defect.
    let setup = Setup::new()
        .set("http.tls.enabled", true)
        .set("http.head_timeout_ms", 120_000);
    let pin = setup.run(&["tls", "pin"]).stdout.trim().to_string();
    assert!(pin.starts_with("sha256/"), "{pin}");
    let daemon = setup.serve();
    let key = daemon.state_dir().join("tls/key.pem");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&key).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "{}", key.display());

    // The tablet: a grant, then /healthz on the same kept-alive connection.
    let mut tablet = tls_connect(daemon.addr, &pin);
    let frame = b64(&photo(GRANTED_PHOTO));
    let reply = exchange(
        &mut tablet,
        &tablet_request("POST", "/image", frame.as_bytes()),
    );
    assert_granted(&reply);
    assert_eq!(reply.json()["door"], "opened");
    let health = exchange(&mut tablet, &tablet_request("GET", "/healthz", b""));
    assert_eq!(health.status, 200);
    assert_eq!(
        daemon.setup().run(&["tls", "pin"]).stdout.trim(),
        pin,
        "the certificate is reused"
    );

    // Another key: the handshake fails before any request is sent.
    let wrong = "sha256/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    let mut impostor = tls_connect(daemon.addr, wrong);
    let attempt = impostor.write_all(&tablet_request("GET", "/healthz", b""));
    assert!(attempt.is_err(), "a wrong pin was accepted");

    // Plain HTTP to the TLS port: closed, no hang.
    let mut plain = TcpStream::connect(daemon.addr).unwrap();
    plain
        .write_all(&tablet_request("GET", "/healthz", b""))
        .unwrap();
    let received = read_to_close(&mut plain, Duration::from_secs(60));
    assert!(
        !received.starts_with(b"HTTP/"),
        "{:?}",
        String::from_utf8_lossy(&received)
    );
    assert_started_once(&daemon);
}

#[test]
fn tls_to_a_plain_port_is_closed_at_once() {
    // Closed at once, not at the head deadline: the client's wait (60 s) ends long before that.
    let daemon = Setup::new().set("http.head_timeout_ms", 120_000).serve();
    let mut client = tls_connect(
        daemon.addr,
        "sha256/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
    );
    let attempt = client.write_all(&tablet_request("GET", "/healthz", b""));
    let err = attempt.expect_err("a TLS handshake succeeded on the plain port");
    assert!(
        !matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        "the handshake was not refused, only timed out: {err}"
    );
    assert_eq!(daemon.get("/healthz").status, 200);
}

/// The frame's age counts from the arrival of its request at the front, so a body that takes longer than
/// the maximum age to upload is decided `stale` and never opens the door.
#[test]
fn a_frame_uploaded_slower_than_the_maximum_age_is_stale() {
    let daemon = Setup::new()
        .set("door.max_decision_age_ms", 1_000)
        .set("http.body_timeout_ms", 10_000)
        .serve();
    let frame = b64(&photo(GRANTED_PHOTO));
    let request = tablet_request("POST", "/image", frame.as_bytes());
    let mut stream = TcpStream::connect(daemon.addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let half = request.len() / 2;
    stream.write_all(&request[..half]).expect("send half");
    std::thread::sleep(Duration::from_millis(1_500));
    stream.write_all(&request[half..]).expect("send the rest");
    let reply = read_reply(&mut stream);
    let answer = reply.json();
    assert_eq!(answer["status"], "stale", "{answer}");
    assert_eq!(answer["door"], "locked", "{answer}");
    assert!(
        daemon.journal().iter().all(|a| !a.is_unlocked()),
        "the door moved"
    );
}

/// Regression (issue 16): with `head_timeout_ms = 2000`, a head sent in one TLS record trickled a byte
/// every 0.5 s kept the connection open past 12 s (plain TCP cut the same trickle at 2.5 s): each
/// socket read met the per-read timeout while rustls waited for the whole record. Now the deadline is
/// absolute across reads; the record here would take a minute to arrive, and is cut long before.
#[test]
fn a_tls_record_trickled_byte_by_byte_is_cut_at_the_head_deadline() {
    let setup = Setup::new()
        .set("http.tls.enabled", true)
        .set("http.head_timeout_ms", 2_000);
    let pin = setup.run(&["tls", "pin"]).stdout.trim().to_string();
    let daemon = setup.serve();
    let mut client = tls_connect(daemon.addr, &pin);
    while client.conn.is_handshaking() {
        client
            .conn
            .complete_io(&mut client.sock)
            .expect("the handshake completes");
    }
    // One TLS record holding a whole head.
    let head = format!(
        "GET /healthz HTTP/1.1\r\nHost: facegate\r\nX-Padding: {}\r\n\r\n",
        "p".repeat(500)
    );
    client.conn.writer().write_all(head.as_bytes()).unwrap();
    let mut record = Vec::new();
    while client.conn.wants_write() {
        client.conn.write_tls(&mut record).unwrap();
    }
    let tcp = &mut client.sock;
    tcp.set_read_timeout(Some(Duration::from_millis(1)))
        .unwrap();
    let mut cut_after = None;
    for (sent, byte) in record.iter().enumerate() {
        let mut answer = [0u8; 64];
        // Session tickets and the close_notify alert may come first; the end of the connection counts.
        let closed = match tcp.read(&mut answer) {
            Ok(n) => n == 0,
            Err(err) => !matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        };
        if closed || tcp.write_all(&[*byte]).is_err() {
            cut_after = Some(sent);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let sent = cut_after.unwrap_or_else(|| {
        panic!(
            "all {} bytes of the record went through: the trickle was never cut",
            record.len()
        )
    });
    eprintln!("the trickle was cut after {sent} of {} bytes", record.len());
    let mut tablet = tls_connect(daemon.addr, &pin);
    let health = exchange(&mut tablet, &tablet_request("GET", "/healthz", b""));
    assert_eq!(health.status, 200);
    assert_started_once(&daemon);
}
