//! The audit trail under attack, on the real daemon over loopback: a flood of requests without a token
//! is counted and summarised, never written a line each, and cannot push a grant's decision and door
//! lines out of the audit.

mod harness;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};

use base64::Engine as _;
use serde_json::Value;

use harness::{audit_lines, photo, wait_for, wait_for_audit, Daemon, Setup, GRANTED_PHOTO};

/// Untokened requests in the flood, and the keep-alive connections that carry them.
const FLOOD: usize = 20_000;
const CONNECTIONS: usize = 4;
/// Requests written before their answers are read back.
const BATCH: usize = 250;

/// Bytes of every file in the audit directory.
fn audit_bytes(daemon: &Daemon) -> u64 {
    std::fs::read_dir(daemon.state_dir().join("audit"))
        .unwrap()
        .flatten()
        .map(|entry| entry.metadata().unwrap().len())
        .sum()
}

/// Reads `count` answers from a keep-alive connection; returns their status codes.
fn read_statuses(stream: &mut TcpStream, buffer: &mut Vec<u8>, count: usize) -> Vec<u16> {
    let mut statuses = Vec::with_capacity(count);
    let mut chunk = [0u8; 64 * 1024];
    while statuses.len() < count {
        if let Some(split) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buffer[..split]).into_owned();
            let length: usize = head
                .lines()
                .filter_map(|line| line.split_once(':'))
                .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
                .map_or(0, |(_, value)| value.trim().parse().unwrap());
            if buffer.len() >= split + 4 + length {
                let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
                statuses.push(status);
                buffer.drain(..split + 4 + length);
                continue;
            }
        }
        let n = stream.read(&mut chunk).expect("the flood's answers");
        assert!(
            n > 0,
            "the daemon closed a keep-alive connection after {} answers",
            statuses.len()
        );
        buffer.extend_from_slice(&chunk[..n]);
    }
    statuses
}

/// `requests` untokened `POST /code` on one keep-alive connection, pipelined in batches; every answer
/// must be 401. Counts the answers in `answered` as they come.
fn flood(daemon: &Daemon, requests: usize, answered: &AtomicUsize) {
    let mut stream = daemon.connect();
    let request = format!(
        "POST /code HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: 0\r\n\r\n",
        daemon.addr
    );
    let batch = request.repeat(BATCH);
    let mut buffer = Vec::new();
    let mut sent = 0;
    while sent < requests {
        let now = BATCH.min(requests - sent);
        stream
            .write_all(&batch.as_bytes()[..request.len() * now])
            .unwrap();
        let statuses = read_statuses(&mut stream, &mut buffer, now);
        assert!(statuses.iter().all(|&s| s == 401), "{statuses:?}");
        sent += now;
        answered.fetch_add(now, Ordering::Relaxed);
    }
}

/// The Prometheus value of `name` (a whole line's metric, labels included).
fn metric(daemon: &Daemon, name: &str) -> u64 {
    let text = daemon.get("/metrics").text();
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

/// Regression: 20,000 untokened `POST /code` on keep-alive connections wrote 4.2 MB of audit lines,
/// one each, into the queue the door's lines share. Now they are counted and summarised: the audit
/// grows by at most 1 MB, and a grant made during the flood keeps its decision and door lines.
#[test]
fn an_untokened_flood_is_summarised_and_a_grant_during_it_keeps_its_lines() {
    let daemon = Setup::new()
        .set("audit.summary_interval_s", 1)
        .set("door.hold_ms", 300)
        .serve();
    wait_for("the start-up lock's audit line", || {
        audit_lines(&daemon)
            .iter()
            .any(|line| line["kind"] == "door")
            .then_some(())
    });
    let before = audit_bytes(&daemon);
    let answered = AtomicUsize::new(0);
    let image = base64::engine::general_purpose::STANDARD.encode(photo(GRANTED_PHOTO));
    let grant = std::thread::scope(|scope| {
        for _ in 0..CONNECTIONS {
            scope.spawn(|| flood(&daemon, FLOOD / CONNECTIONS, &answered));
        }
        wait_for("the flood under way", || {
            (answered.load(Ordering::Relaxed) >= FLOOD / 10).then_some(())
        });
        let grant = daemon.post("/image", image.as_bytes()).json();
        assert!(
            answered.load(Ordering::Relaxed) < FLOOD,
            "the grant came after the flood; make the flood longer"
        );
        grant
    });
    assert_eq!(
        (grant["status"].as_str(), grant["door"].as_str()),
        (Some("granted"), Some("opened")),
        "{grant}"
    );
    let id = grant["request_id"].as_str().unwrap();

    // Every refusal is counted in /metrics and in the summaries (or, if the queue overflowed, as dropped).
    assert_eq!(
        metric(
            &daemon,
            "facegate_requests_total{endpoint=\"code\",status=\"unauthorized\"}"
        ),
        FLOOD as u64
    );
    let summarised = wait_for("every refusal summarised", || {
        let lines = audit_lines(&daemon);
        let counted: u64 = lines
            .iter()
            .filter(|line| line["kind"] == "refused_summary")
            .map(|line| line["count"].as_u64().unwrap())
            .sum();
        let dropped = metric(&daemon, "facegate_audit_dropped_total");
        (counted + dropped == FLOOD as u64).then_some(counted)
    });
    assert!(summarised > 0);
    let summary = audit_lines(&daemon)
        .into_iter()
        .find(|line| line["kind"] == "refused_summary")
        .unwrap();
    assert_eq!(summary["remote"], "127.0.0.1", "{summary}");
    assert!(
        summary["by"]["unauthorized"].as_u64().unwrap() > 0,
        "{summary}"
    );

    // The grant's lines are all there, by its request id.
    let decision = wait_for_audit(&daemon, "decision", id);
    assert_eq!(decision["door"], "opened", "{decision}");
    let door = wait_for("the grant's unlock and relock lines", || {
        let lines: Vec<Value> = audit_lines(&daemon)
            .into_iter()
            .filter(|line| line["kind"] == "door" && line["request_id"] == id)
            .collect();
        let states: Vec<&str> = lines.iter().filter_map(|l| l["state"].as_str()).collect();
        (states.contains(&"unlocked") && states.contains(&"locked")).then_some(states.len())
    });
    assert!(door >= 2);

    let grown = audit_bytes(&daemon) - before;
    assert!(
        grown <= 1024 * 1024,
        "the audit grew by {grown} bytes for {FLOOD} untokened requests"
    );
    let unauthorized_log_lines = daemon
        .logs()
        .iter()
        .filter(|line| line.contains("unauthorized"))
        .count();
    assert!(
        unauthorized_log_lines < 100,
        "{unauthorized_log_lines} log lines for the flood: it must be summarised"
    );
    assert!(
        !audit_lines(&daemon)
            .iter()
            .any(|line| line["kind"] == "rejected" && line["error"] == "unauthorized"),
        "no refusal without a token is audited one by one"
    );
}
