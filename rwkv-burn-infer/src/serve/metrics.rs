//! The server's counters, shared by the HTTP side and the model worker, written out as
//! Prometheus text for `GET /metrics`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

/// Upper bounds (seconds) of the time-to-first-token histogram's buckets.
const TTFT_BUCKETS: [f64; 10] = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Live counters. Gauges are set by whoever owns the quantity; counters only grow.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Requests waiting for a place in the batch.
    pub queued: AtomicUsize,
    /// Sequences reading their prompt or generating.
    pub active: AtomicUsize,
    /// Requests accepted into the queue.
    pub requests: AtomicU64,
    /// Requests refused because the queue was full.
    pub rejected: AtomicU64,
    /// Prompt tokens read (cached prefixes excluded).
    pub prompt_tokens: AtomicU64,
    /// Prompt tokens served from the prefix cache.
    pub cached_tokens: AtomicU64,
    /// Tokens generated.
    pub generated_tokens: AtomicU64,
    /// Generated tokens per second over the last measuring window, as f64 bits.
    tokens_per_second: AtomicU64,
    ttft_buckets: [AtomicU64; TTFT_BUCKETS.len()],
    ttft_count: AtomicU64,
    /// Sum of the times to first token, in microseconds.
    ttft_sum_us: AtomicU64,
}

impl Metrics {
    /// Records one time to first token.
    pub fn observe_ttft(&self, seconds: f64) {
        for (bound, bucket) in TTFT_BUCKETS.iter().zip(&self.ttft_buckets) {
            if seconds <= *bound {
                bucket.fetch_add(1, Relaxed);
            }
        }
        self.ttft_count.fetch_add(1, Relaxed);
        self.ttft_sum_us.fetch_add((seconds * 1e6) as u64, Relaxed);
    }

    /// Sets the current generation rate.
    pub fn set_tokens_per_second(&self, rate: f64) {
        self.tokens_per_second.store(rate.to_bits(), Relaxed);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        metric(
            "rwkv_queue_length",
            "gauge",
            "Requests waiting for a place in the batch.",
            self.queued.load(Relaxed).to_string(),
        );
        metric(
            "rwkv_active_sequences",
            "gauge",
            "Sequences reading their prompt or generating.",
            self.active.load(Relaxed).to_string(),
        );
        metric(
            "rwkv_requests_total",
            "counter",
            "Generation requests accepted.",
            self.requests.load(Relaxed).to_string(),
        );
        metric(
            "rwkv_rejected_requests_total",
            "counter",
            "Requests refused because the queue was full.",
            self.rejected.load(Relaxed).to_string(),
        );
        metric(
            "rwkv_prompt_tokens_total",
            "counter",
            "Prompt tokens read by the model.",
            self.prompt_tokens.load(Relaxed).to_string(),
        );
        metric(
            "rwkv_cached_prompt_tokens_total",
            "counter",
            "Prompt tokens taken from the prefix cache.",
            self.cached_tokens.load(Relaxed).to_string(),
        );
        metric(
            "rwkv_generated_tokens_total",
            "counter",
            "Tokens generated.",
            self.generated_tokens.load(Relaxed).to_string(),
        );
        metric(
            "rwkv_tokens_per_second",
            "gauge",
            "Generated tokens per second over the last few seconds.",
            format!(
                "{:.3}",
                f64::from_bits(self.tokens_per_second.load(Relaxed))
            ),
        );
        let name = "rwkv_time_to_first_token_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Time from a request's arrival to its first generated token."
        );
        let _ = writeln!(out, "# TYPE {name} histogram");
        for (bound, bucket) in TTFT_BUCKETS.iter().zip(&self.ttft_buckets) {
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{bound}\"}} {}",
                bucket.load(Relaxed)
            );
        }
        let count = self.ttft_count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "{name}_sum {:.6}",
            self.ttft_sum_us.load(Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count {count}");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let m = Metrics::default();
        m.observe_ttft(0.03);
        m.observe_ttft(3.0);
        let text = m.render();
        assert!(
            text.contains("rwkv_time_to_first_token_seconds_bucket{le=\"0.025\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("rwkv_time_to_first_token_seconds_bucket{le=\"0.05\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("rwkv_time_to_first_token_seconds_bucket{le=\"5\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("rwkv_time_to_first_token_seconds_count 2"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE rwkv_queue_length gauge\nrwkv_queue_length 0"),
            "{text}"
        );
    }
}
