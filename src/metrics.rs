//! Counters and latency histograms for GET /metrics, rendered as Prometheus text.

use crate::sync::lock_recovering;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

/// Upper bounds of the latency buckets, in milliseconds.
const BUCKETS_MS: [f64; 14] = [
    1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 75.0, 100.0, 150.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0,
];

#[derive(Debug, Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS_MS.len()],
    total: u64,
    sum_ms: f64,
}

impl Histogram {
    fn observe(&mut self, ms: f64) {
        if let Some(i) = BUCKETS_MS.iter().position(|&bound| ms <= bound) {
            self.counts[i] += 1;
        }
        self.total += 1;
        self.sum_ms += ms;
    }
}

#[derive(Debug, Default)]
struct Inner {
    requests: BTreeMap<(String, &'static str), u64>,
    stages: BTreeMap<&'static str, Histogram>,
    door_openings: u64,
    snapshot_count: u64,
    snapshot_bytes: u64,
    /// (kind, result) → count: commands and galleries received over MQTT.
    mqtt_received: BTreeMap<(&'static str, &'static str), u64>,
    /// event → count: the door's input events (opened, forced, held, exit, ...).
    door_inputs: BTreeMap<&'static str, u64>,
    /// alarm → times raised.
    alarms: BTreeMap<&'static str, u64>,
}

/// A value kept elsewhere (an atomic counter of another thread), read when /metrics renders.
struct Source {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    read: Box<dyn Fn() -> u64 + Send + Sync>,
}

/// Everything /metrics reports; shared by all threads.
#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
    sources: Mutex<Vec<Source>>,
}

impl Metrics {
    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        let mut inner = lock_recovering(&self.inner);
        f(&mut inner)
    }

    /// One answered request on `endpoint` with `status` (granted, unknown, bad_request, ...).
    pub(crate) fn count_request(&self, endpoint: &str, status: &'static str) {
        self.with(|m| {
            *m.requests
                .entry((endpoint.to_string(), status))
                .or_default() += 1
        });
    }

    /// Time spent in one stage (decode, detect, align, embed, match, total).
    pub(crate) fn observe_stage(&self, stage: &'static str, ms: f64) {
        self.with(|m| m.stages.entry(stage).or_default().observe(ms));
    }

    pub(crate) fn count_door_opening(&self) {
        self.with(|m| m.door_openings += 1);
    }

    pub(crate) fn set_snapshot_usage(&self, count: u64, bytes: u64) {
        self.with(|m| {
            m.snapshot_count = count;
            m.snapshot_bytes = bytes;
        });
    }

    /// One event of the door's inputs (`opened`, `forced`, `held`, `exit`, ...).
    pub(crate) fn count_door_input(&self, event: &'static str) {
        self.with(|m| *m.door_inputs.entry(event).or_default() += 1);
    }

    /// A command or gallery received over MQTT (`kind`) and what became of it (`result`).
    pub(crate) fn count_mqtt_received(&self, kind: &'static str, result: &'static str) {
        self.with(|m| *m.mqtt_received.entry((kind, result)).or_default() += 1);
    }

    /// An alarm raised (`code_entry_paused`, ...).
    pub(crate) fn count_alarm(&self, alarm: &'static str) {
        self.with(|m| *m.alarms.entry(alarm).or_default() += 1);
    }

    /// Reports `read()` as metric `name` of type `kind` (`counter` or `gauge`) from now on.
    pub(crate) fn add_source(
        &self,
        name: &'static str,
        kind: &'static str,
        help: &'static str,
        read: impl Fn() -> u64 + Send + Sync + 'static,
    ) {
        lock_recovering(&self.sources).push(Source {
            name,
            kind,
            help,
            read: Box::new(read),
        });
    }

    /// The Prometheus text exposition of every metric.
    pub(crate) fn render(&self) -> String {
        let m = self.with(|m| {
            (
                m.requests.clone(),
                m.stages.clone(),
                m.door_openings,
                m.snapshot_count,
                m.snapshot_bytes,
                m.mqtt_received.clone(),
                m.door_inputs.clone(),
                m.alarms.clone(),
            )
        });
        let (
            requests,
            stages,
            openings,
            snap_count,
            snap_bytes,
            mqtt_received,
            door_inputs,
            alarms,
        ) = m;
        let mut out = String::new();
        out.push_str("# HELP facegate_requests_total Answered requests by endpoint and status.\n");
        out.push_str("# TYPE facegate_requests_total counter\n");
        for ((endpoint, status), n) in &requests {
            let _ = writeln!(
                out,
                "facegate_requests_total{{endpoint=\"{endpoint}\",status=\"{status}\"}} {n}"
            );
        }
        out.push_str("# HELP facegate_stage_duration_seconds Time per pipeline stage.\n");
        out.push_str("# TYPE facegate_stage_duration_seconds histogram\n");
        for (stage, h) in &stages {
            let mut cumulative = 0;
            for (bound, count) in BUCKETS_MS.iter().zip(h.counts) {
                cumulative += count;
                let _ = writeln!(
                    out,
                    "facegate_stage_duration_seconds_bucket{{stage=\"{stage}\",le=\"{}\"}} {cumulative}",
                    bound / 1000.0
                );
            }
            let _ = writeln!(
                out,
                "facegate_stage_duration_seconds_bucket{{stage=\"{stage}\",le=\"+Inf\"}} {}",
                h.total
            );
            let _ = writeln!(
                out,
                "facegate_stage_duration_seconds_sum{{stage=\"{stage}\"}} {}",
                h.sum_ms / 1000.0
            );
            let _ = writeln!(
                out,
                "facegate_stage_duration_seconds_count{{stage=\"{stage}\"}} {}",
                h.total
            );
        }
        let gauges = [
            (
                "facegate_door_openings_total",
                "counter",
                "Relay openings.",
                openings,
            ),
            (
                "facegate_snapshots",
                "gauge",
                "Failure snapshots on disk.",
                snap_count,
            ),
            (
                "facegate_snapshot_bytes",
                "gauge",
                "Bytes used by failure snapshots.",
                snap_bytes,
            ),
        ];
        out.push_str(
            "# HELP facegate_mqtt_received_total Commands and galleries received over MQTT, by result.\n",
        );
        out.push_str("# TYPE facegate_mqtt_received_total counter\n");
        for ((kind, result), n) in &mqtt_received {
            let _ = writeln!(
                out,
                "facegate_mqtt_received_total{{kind=\"{kind}\",result=\"{result}\"}} {n}"
            );
        }
        let by_label = [
            (
                "facegate_door_input_events_total",
                "Events of the door contact and exit button.",
                "event",
                &door_inputs,
            ),
            (
                "facegate_alarms_total",
                "Alarms raised, by alarm.",
                "alarm",
                &alarms,
            ),
        ];
        for (name, help, label, counts) in by_label {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (value, n) in counts {
                let _ = writeln!(out, "{name}{{{label}=\"{value}\"}} {n}");
            }
        }
        let sources = lock_recovering(&self.sources);
        let sourced = sources.iter().map(|s| (s.name, s.kind, s.help, (s.read)()));
        for (name, kind, help, value) in gauges.into_iter().chain(sourced) {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_requests_are_labelled() {
        let m = Metrics::default();
        m.count_request("image", "granted");
        m.count_request("image", "granted");
        m.observe_stage("detect", 3.0);
        m.observe_stage("detect", 30.0);
        m.observe_stage("detect", 9000.0);
        m.count_door_opening();
        m.count_door_input("forced");
        let text = m.render();
        assert!(text.contains("facegate_door_input_events_total{event=\"forced\"} 1"));
        assert!(text.contains("facegate_requests_total{endpoint=\"image\",status=\"granted\"} 2"));
        assert!(text
            .contains("facegate_stage_duration_seconds_bucket{stage=\"detect\",le=\"0.005\"} 1"));
        assert!(
            text.contains("facegate_stage_duration_seconds_bucket{stage=\"detect\",le=\"0.05\"} 2")
        );
        assert!(
            text.contains("facegate_stage_duration_seconds_bucket{stage=\"detect\",le=\"+Inf\"} 3")
        );
        assert!(text.contains("facegate_door_openings_total 1"));
    }

    #[test]
    fn sources_are_read_at_render_time() {
        let m = Metrics::default();
        let counter = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let read = std::sync::Arc::clone(&counter);
        m.add_source("facegate_things_total", "counter", "Things.", move || {
            read.load(std::sync::atomic::Ordering::Relaxed)
        });
        counter.store(7, std::sync::atomic::Ordering::Relaxed);
        let text = m.render();
        assert!(text.contains("# TYPE facegate_things_total counter\nfacegate_things_total 7"));
    }
}
