//! Prometheus text for /metrics: requests by endpoint and status, tokens, queue depth, batch
//! size, cache use, and histograms of time to first token, time per output token and request
//! duration.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use deepseek_engine::scheduler::Stats;

const BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

#[derive(Default)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        for (i, &b) in BUCKETS.iter().enumerate() {
            if s <= b {
                self.counts[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    fn render(&self, name: &str, help: &str, out: &mut String) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (i, b) in BUCKETS.iter().enumerate() {
            let c = self.counts[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {c}");
        }
        let n = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {n}");
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {n}");
    }
}

#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    pub time_to_first_token: Histogram,
    pub time_per_output_token: Histogram,
    pub request_duration: Histogram,
}

impl Metrics {
    pub fn count_request(&self, endpoint: &str, status: u16) {
        if let Ok(mut m) = self.requests.lock() {
            *m.entry((endpoint.to_string(), status)).or_default() += 1;
        }
    }

    pub fn render(&self, stats: &Stats, keys: Option<&crate::keys::Keys>) -> String {
        let mut out = String::new();
        out.push_str("# HELP deepseek_requests_total HTTP requests by endpoint and status.\n# TYPE deepseek_requests_total counter\n");
        if let Ok(m) = self.requests.lock() {
            for ((e, s), n) in m.iter() {
                let _ = writeln!(
                    out,
                    "deepseek_requests_total{{endpoint=\"{e}\",status=\"{s}\"}} {n}"
                );
            }
        }
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let ru = |a: &std::sync::atomic::AtomicUsize| a.load(Ordering::Relaxed);
        let counters = [
            (
                "deepseek_prompt_tokens_total",
                "Prompt tokens of admitted requests.",
                r(&stats.prompt_tokens),
            ),
            (
                "deepseek_prompt_cache_hit_tokens_total",
                "Prompt tokens served from the prefix cache.",
                r(&stats.cached_prompt_tokens),
            ),
            (
                "deepseek_generated_tokens_total",
                "Tokens generated.",
                r(&stats.generated_tokens),
            ),
            (
                "deepseek_steps_total",
                "Scheduler steps run.",
                r(&stats.steps),
            ),
            (
                "deepseek_draft_tokens_total",
                "Draft tokens checked (serve --draft).",
                r(&stats.draft_proposed),
            ),
            (
                "deepseek_draft_accepted_tokens_total",
                "Draft tokens the model agreed with.",
                r(&stats.draft_accepted),
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        }
        let gauges = [
            (
                "deepseek_queue_depth",
                "Requests waiting for a place in the batch.",
                ru(&stats.waiting),
            ),
            (
                "deepseek_running_sequences",
                "Sequences in the running batch.",
                ru(&stats.running),
            ),
            (
                "deepseek_batch_size",
                "Sequences in the last decode step.",
                ru(&stats.last_batch),
            ),
            (
                "deepseek_cache_blocks_used",
                "Cache blocks in use (sequences and prefix cache).",
                ru(&stats.cache_blocks_used),
            ),
            (
                "deepseek_cache_blocks_total",
                "Cache blocks the pool may hold.",
                ru(&stats.cache_blocks_total),
            ),
            (
                "deepseek_prefix_cache_blocks",
                "Blocks indexed by the prefix cache.",
                ru(&stats.prefix_cache_blocks),
            ),
        ];
        for (name, help, v) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        // Usage per API key, by the key's name (never the key).
        if let Some(keys) = keys {
            for (metric, help, get) in [
                (
                    "deepseek_key_requests_total",
                    "Requests admitted, by API key name.",
                    (|u: &crate::keys::Usage| u.requests.load(Ordering::Relaxed))
                        as fn(&crate::keys::Usage) -> u64,
                ),
                (
                    "deepseek_key_refused_total",
                    "Requests refused by the key's limits (429).",
                    |u| u.refused.load(Ordering::Relaxed),
                ),
                (
                    "deepseek_key_prompt_tokens_total",
                    "Prompt tokens of finished requests, by API key name.",
                    |u| u.prompt_tokens.load(Ordering::Relaxed),
                ),
                (
                    "deepseek_key_completion_tokens_total",
                    "Completion tokens of finished requests, by API key name.",
                    |u| u.completion_tokens.load(Ordering::Relaxed),
                ),
            ] {
                let _ = writeln!(out, "# HELP {metric} {help}\n# TYPE {metric} counter");
                for k in keys.iter() {
                    let _ = writeln!(out, "{metric}{{key=\"{}\"}} {}", k.name, get(&k.usage));
                }
            }
        }
        // The prefix cache's two tiers: hits by where they came from, and the disk tier.
        let disk_hits = stats.disk.as_ref().map_or(0, |d| d.hit_tokens());
        let _ = writeln!(
            out,
            "# HELP deepseek_prompt_cache_hit_tokens_by_tier_total Prompt tokens served from the prefix cache, by tier.\n# TYPE deepseek_prompt_cache_hit_tokens_by_tier_total counter\ndeepseek_prompt_cache_hit_tokens_by_tier_total{{tier=\"memory\"}} {}\ndeepseek_prompt_cache_hit_tokens_by_tier_total{{tier=\"disk\"}} {disk_hits}",
            r(&stats.cached_prompt_tokens).saturating_sub(disk_hits)
        );
        if let Some(d) = &stats.disk {
            for (name, kind, help, v) in [
                (
                    "deepseek_disk_cache_bytes",
                    "gauge",
                    "Bytes of block files in --cache-dir.",
                    r(&d.bytes),
                ),
                (
                    "deepseek_disk_cache_hit_blocks_total",
                    "counter",
                    "Blocks read back from --cache-dir.",
                    r(&d.hit_blocks),
                ),
                (
                    "deepseek_disk_cache_written_blocks_total",
                    "counter",
                    "Blocks written to --cache-dir.",
                    r(&d.written_blocks),
                ),
                (
                    "deepseek_disk_cache_dropped_blocks_total",
                    "counter",
                    "Blocks not written (queue full or the tier off).",
                    r(&d.dropped_blocks),
                ),
                (
                    "deepseek_disk_cache_bad_files_total",
                    "counter",
                    "Corrupt, cut-off or foreign block files skipped and removed.",
                    r(&d.bad_files),
                ),
            ] {
                let _ = writeln!(
                    out,
                    "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
                );
            }
        }
        self.time_to_first_token.render(
            "deepseek_time_to_first_token_seconds",
            "From request arrival to its first generated token.",
            &mut out,
        );
        self.time_per_output_token.render(
            "deepseek_time_per_output_token_seconds",
            "Between consecutive generated tokens of a request.",
            &mut out,
        );
        self.request_duration.render(
            "deepseek_request_duration_seconds",
            "From request arrival to its last token.",
            &mut out,
        );
        out
    }
}
