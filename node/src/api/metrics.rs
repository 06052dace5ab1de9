//! Request counters and latency histograms, rendered in the Prometheus text format.

use http::{Method, StatusCode};
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 11] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];
const METHODS: [&str; 5] = ["GET", "PUT", "DELETE", "POST", "other"];
const CLASSES: [&str; 4] = ["2xx", "4xx", "5xx", "other"];

/// Counters shared by every connection.
#[derive(Default)]
pub struct Metrics {
    /// Requests by method and status class.
    requests: [[AtomicU64; 4]; 5],
    /// Latency histogram by method: bucket counts (cumulative on render), count, sum in µs.
    latency: [[AtomicU64; 11]; 5],
    latency_count: [AtomicU64; 5],
    latency_sum_us: [AtomicU64; 5],
    /// Open client connections.
    connections: AtomicU64,
    /// Open watch streams.
    watchers: AtomicU64,
}

fn method_index(m: &Method) -> usize {
    match *m {
        Method::GET | Method::HEAD => 0,
        Method::PUT => 1,
        Method::DELETE => 2,
        Method::POST => 3,
        _ => 4,
    }
}

impl Metrics {
    pub fn observe(&self, method: &Method, status: StatusCode, took: Duration) {
        let m = method_index(method);
        let class = match status.as_u16() {
            200..=299 => 0,
            400..=499 => 1,
            500..=599 => 2,
            _ => 3,
        };
        self.requests[m][class].fetch_add(1, Relaxed);
        let secs = took.as_secs_f64();
        if let Some(b) = BUCKETS.iter().position(|&ub| secs <= ub) {
            self.latency[m][b].fetch_add(1, Relaxed);
        }
        self.latency_count[m].fetch_add(1, Relaxed);
        self.latency_sum_us[m].fetch_add(took.as_micros() as u64, Relaxed);
    }

    pub fn connection_opened(&self) {
        self.connections.fetch_add(1, Relaxed);
    }

    pub fn connection_closed(&self) {
        self.connections.fetch_sub(1, Relaxed);
    }

    pub fn watcher_opened(&self) {
        self.watchers.fetch_add(1, Relaxed);
    }

    pub fn watcher_closed(&self) {
        self.watchers.fetch_sub(1, Relaxed);
    }

    /// The request metrics in Prometheus text format.
    pub fn render(&self, out: &mut String) {
        out.push_str(
            "# HELP herd_http_requests_total HTTP requests answered, by method and status class.\n",
        );
        out.push_str("# TYPE herd_http_requests_total counter\n");
        for (m, name) in METHODS.iter().enumerate() {
            for (c, class) in CLASSES.iter().enumerate() {
                let n = self.requests[m][c].load(Relaxed);
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "herd_http_requests_total{{method=\"{name}\",status=\"{class}\"}} {n}"
                    );
                }
            }
        }
        out.push_str("# HELP herd_http_request_duration_seconds Time to answer a request (a watch: to start it).\n");
        out.push_str("# TYPE herd_http_request_duration_seconds histogram\n");
        for (m, name) in METHODS.iter().enumerate() {
            let count = self.latency_count[m].load(Relaxed);
            if count == 0 {
                continue;
            }
            let mut cum = 0;
            for (b, ub) in BUCKETS.iter().enumerate() {
                cum += self.latency[m][b].load(Relaxed);
                let _ = writeln!(out, "herd_http_request_duration_seconds_bucket{{method=\"{name}\",le=\"{ub}\"}} {cum}");
            }
            let _ = writeln!(out, "herd_http_request_duration_seconds_bucket{{method=\"{name}\",le=\"+Inf\"}} {count}");
            let sum = self.latency_sum_us[m].load(Relaxed) as f64 / 1e6;
            let _ = writeln!(
                out,
                "herd_http_request_duration_seconds_sum{{method=\"{name}\"}} {sum}"
            );
            let _ = writeln!(
                out,
                "herd_http_request_duration_seconds_count{{method=\"{name}\"}} {count}"
            );
        }
        gauge(
            out,
            "herd_http_connections",
            "Open client connections.",
            self.connections.load(Relaxed),
        );
        gauge(
            out,
            "herd_watchers",
            "Open watch streams.",
            self.watchers.load(Relaxed),
        );
    }
}

/// Appends one gauge.
pub fn gauge(out: &mut String, name: &str, help: &str, v: u64) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
}

/// Appends one counter.
pub fn counter(out: &mut String, name: &str, help: &str, v: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
    );
}
