//! The connection front against the real binary on loopback (issue 9): other HTTP versions leave no
//! thread or descriptor behind, idle and slow clients do not starve the tablet, at the connection limit
//! waiting clients make room and busy ones refuse the next (counted), and the tablet's contract holds over TLS with the certificate's key pinned.

mod harness;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
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
    let idle: Vec<TcpStream> = (0..IDLE_CONNECTIONS)
        .map(|_| TcpStream::connect(daemon.addr).expect("connect an idle client"))
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

#[test]
fn at_the_connection_limit_waiting_clients_make_room_and_busy_ones_refuse_the_next() {
    let limit = 4;
    let daemon = Setup::new()
        .set("http.max_connections", limit)
        .set("http.body_timeout_ms", 60_000)
        .serve();
    // Silent clients fill every slot; the tablet still gets in, in place of the longest waiting.
    let silent: Vec<TcpStream> = (0..limit)
        .map(|_| TcpStream::connect(daemon.addr).expect("connect"))
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut tablet = TcpStream::connect(daemon.addr).expect("the tablet connects");
    tablet
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let frame = b64(&photo(GRANTED_PHOTO));
    assert_granted(&exchange(
        &mut tablet,
        &tablet_request("POST", "/image", frame.as_bytes()),
    ));
    drop((silent, tablet));

    // Clients that hold the token and upload slowly are working: they are not evicted, the next is refused.
    let head = tablet_request("POST", "/image", &vec![b'A'; 100_000]);
    let uploads: Vec<TcpStream> = (0..limit)
        .map(|_| {
            let mut upload = TcpStream::connect(daemon.addr).expect("connect");
            upload
                .write_all(&head[..head.len() - 50_000])
                .expect("send half");
            upload
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut refused = TcpStream::connect(daemon.addr).expect("the kernel accepts the connection");
    let started = Instant::now();
    let received = read_to_close(&mut refused, Duration::from_secs(5));
    assert!(
        received.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&received)
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "closed only after {:?}",
        started.elapsed()
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
    let setup = Setup::new().set("http.tls.enabled", true);
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
    let started = Instant::now();
    let received = read_to_close(&mut plain, Duration::from_secs(10));
    assert!(
        !received.starts_with(b"HTTP/"),
        "{:?}",
        String::from_utf8_lossy(&received)
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "closed only after {:?}",
        started.elapsed()
    );
    assert_started_once(&daemon);
}

#[test]
fn tls_to_a_plain_port_is_closed_at_once() {
    let daemon = Setup::new().serve();
    let started = Instant::now();
    let mut client = tls_connect(
        daemon.addr,
        "sha256/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
    );
    client
        .sock
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let attempt = client.write_all(&tablet_request("GET", "/healthz", b""));
    assert!(
        attempt.is_err(),
        "a TLS handshake succeeded on the plain port"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "failed only after {:?}",
        started.elapsed()
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
