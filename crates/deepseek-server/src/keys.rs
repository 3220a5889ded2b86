//! API keys with names and limits (`--api-keys FILE`, and the single `--api-key`), as an API
//! platform serving many developers has them: requests per minute, tokens per minute and
//! requests at once, each answered with 429 and `Retry-After` for that key alone, and usage
//! counted per key for `/metrics` (by name: the keys themselves are never logged or reported).
//!
//! The file has one key per line: `NAME KEY [rpm=N] [tpm=N] [concurrent=N]`; `#` starts a
//! comment. Tokens per minute count prompt and completion tokens of finished requests; a
//! request is refused while the last minute's are spent (so one long request may overrun the
//! limit once, as with hosted APIs).

use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::error::ApiError;

/// What one key may do; `None` is unlimited.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Limits {
    pub requests_per_minute: Option<u32>,
    pub tokens_per_minute: Option<u64>,
    pub concurrent: Option<usize>,
}

/// Usage of one key since the server started.
#[derive(Debug, Default)]
pub struct Usage {
    pub requests: AtomicU64,
    pub refused: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub completion_tokens: AtomicU64,
}

/// A bucket refilled continuously at `per_minute`, up to `per_minute`.
#[derive(Debug)]
struct Bucket {
    level: f64,
    at: Instant,
}

impl Bucket {
    fn full(per_minute: f64, now: Instant) -> Self {
        Bucket {
            level: per_minute,
            at: now,
        }
    }
    fn refill(&mut self, per_minute: f64, now: Instant) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.level = (self.level + dt * per_minute / 60.0).min(per_minute);
        self.at = now;
    }
    /// Seconds until the level reaches `want`.
    fn wait_for(&self, want: f64, per_minute: f64) -> u64 {
        ((want - self.level) * 60.0 / per_minute).ceil().max(1.0) as u64
    }
}

pub struct ApiKey {
    pub name: String,
    secret: String,
    pub limits: Limits,
    buckets: Mutex<(Option<Bucket>, Option<Bucket>)>,
    in_flight: AtomicUsize,
    pub usage: Usage,
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        f.debug_struct("ApiKey")
            .field("name", &self.name)
            .field("limits", &self.limits)
            .finish()
    }
}

/// Held while a request of a key runs (its response body included); counts toward the key's
/// `concurrent` limit.
#[derive(Debug)]
pub struct InFlight(Arc<ApiKey>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl ApiKey {
    fn new(name: String, secret: String, limits: Limits) -> Self {
        let now = Instant::now();
        ApiKey {
            buckets: Mutex::new((
                limits
                    .requests_per_minute
                    .map(|r| Bucket::full(r as f64, now)),
                limits
                    .tokens_per_minute
                    .map(|t| Bucket::full(t as f64, now)),
            )),
            name,
            secret,
            limits,
            in_flight: AtomicUsize::new(0),
            usage: Usage::default(),
        }
    }

    /// Lets a request of this key start, or says (429, `Retry-After`) which limit it hit.
    pub fn admit(self: &Arc<Self>) -> Result<InFlight, ApiError> {
        self.admit_at(Instant::now())
    }

    fn admit_at(self: &Arc<Self>, now: Instant) -> Result<InFlight, ApiError> {
        let refuse = |what: String, retry: u64| {
            self.usage.refused.fetch_add(1, Ordering::Relaxed);
            Err(ApiError::rate_limited(
                format!("API key `{}`: {what}; retry after {retry} s", self.name),
                retry,
            ))
        };
        if let Some(max) = self.limits.concurrent {
            let ok = self
                .in_flight
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < max).then_some(n + 1)
                })
                .is_ok();
            if !ok {
                return refuse(format!("{max} requests already running (its limit)"), 1);
            }
        } else {
            self.in_flight.fetch_add(1, Ordering::AcqRel);
        }
        let guard = InFlight(self.clone());
        let mut b = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if let (Some(t), Some(tpm)) = (&mut b.1, self.limits.tokens_per_minute) {
            t.refill(tpm as f64, now);
            if t.level < 1.0 {
                let wait = t.wait_for(1.0, tpm as f64);
                drop(b);
                return refuse(format!("{tpm} tokens per minute used"), wait);
            }
        }
        if let (Some(r), Some(rpm)) = (&mut b.0, self.limits.requests_per_minute) {
            r.refill(rpm as f64, now);
            if r.level < 1.0 {
                let wait = r.wait_for(1.0, rpm as f64);
                drop(b);
                return refuse(format!("{rpm} requests per minute used"), wait);
            }
            r.level -= 1.0;
        }
        self.usage.requests.fetch_add(1, Ordering::Relaxed);
        Ok(guard)
    }

    /// Counts a finished request's tokens (toward `tpm` and the usage figures).
    pub fn charge(&self, prompt_tokens: usize, completion_tokens: usize) {
        self.charge_at(prompt_tokens, completion_tokens, Instant::now())
    }

    fn charge_at(&self, prompt_tokens: usize, completion_tokens: usize, now: Instant) {
        self.usage
            .prompt_tokens
            .fetch_add(prompt_tokens as u64, Ordering::Relaxed);
        self.usage
            .completion_tokens
            .fetch_add(completion_tokens as u64, Ordering::Relaxed);
        if let Some(tpm) = self.limits.tokens_per_minute {
            let mut b = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(t) = &mut b.1 {
                t.refill(tpm as f64, now);
                t.level -= (prompt_tokens + completion_tokens) as f64;
            }
        }
    }
}

/// The keys a server accepts.
#[derive(Debug, Default)]
pub struct Keys {
    keys: Vec<Arc<ApiKey>>,
}

impl Keys {
    /// `--api-key KEY`: one key, named `default`, without limits.
    pub fn single(secret: &str) -> Keys {
        Keys {
            keys: vec![Arc::new(ApiKey::new(
                "default".into(),
                secret.into(),
                Limits::default(),
            ))],
        }
    }

    /// Adds `other`'s keys (`--api-key` beside `--api-keys`).
    pub fn extend(&mut self, other: Keys) {
        self.keys.extend(other.keys);
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<ApiKey>> {
        self.keys.iter()
    }

    /// Reads an `--api-keys` file; errors name the file and line (never the key).
    pub fn from_file(path: &Path) -> Result<Keys, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("--api-keys {}: cannot read ({e})", path.display()))?;
        Self::parse(&text).map_err(|e| format!("--api-keys {}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Keys, String> {
        let mut keys: Vec<Arc<ApiKey>> = vec![];
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let at = |msg: String| format!("line {}: {msg}", n + 1);
            let mut words = line.split_whitespace();
            let (Some(name), Some(secret)) = (words.next(), words.next()) else {
                return Err(at(
                    "expected `NAME KEY [rpm=N] [tpm=N] [concurrent=N]`".into()
                ));
            };
            if secret.contains('=') {
                return Err(at(format!(
                    "key `{name}` has no key before its limits (`NAME KEY [rpm=N] ...`)"
                )));
            }
            let mut limits = Limits::default();
            for w in words {
                let (k, v) = w.split_once('=').ok_or_else(|| {
                    at(format!(
                        "`{w}` is not a limit (rpm=N, tpm=N or concurrent=N)"
                    ))
                })?;
                let num = |what: &str| -> Result<u64, String> {
                    v.parse::<u64>()
                        .ok()
                        .filter(|&x| x > 0)
                        .ok_or_else(|| at(format!("{what}={v}: expected a whole number above 0")))
                };
                match k {
                    "rpm" => {
                        limits.requests_per_minute = Some(num("rpm")?.min(u32::MAX as u64) as u32)
                    }
                    "tpm" => limits.tokens_per_minute = Some(num("tpm")?),
                    "concurrent" => limits.concurrent = Some(num("concurrent")? as usize),
                    _ => return Err(at(format!("unknown limit `{k}` (rpm, tpm or concurrent)"))),
                }
            }
            if keys.iter().any(|k| k.name == name) {
                return Err(at(format!("the name `{name}` is used twice")));
            }
            if keys.iter().any(|k| k.secret == secret) {
                return Err(at(format!("key `{name}` repeats another name's key")));
            }
            keys.push(Arc::new(ApiKey::new(name.into(), secret.into(), limits)));
        }
        if keys.is_empty() {
            return Err("no keys in it".into());
        }
        Ok(Keys { keys })
    }

    /// The key `given` matches, comparing against every key in time that does not depend on
    /// which one (or how much of one) matched.
    pub fn find(&self, given: &str) -> Option<Arc<ApiKey>> {
        let mut found = None;
        for k in &self.keys {
            if crate::auth::constant_time_eq(given.as_bytes(), k.secret.as_bytes()) {
                found = Some(k.clone());
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_file_names_each_mistake_by_line() {
        let keys = Keys::parse(
            "# team keys\nalice sk-a rpm=3 tpm=1000\n\nbob sk-b concurrent=1  # the batch job\ncarol sk-c\n",
        )
        .unwrap();
        let names: Vec<_> = keys.iter().map(|k| k.name.as_str()).collect();
        assert_eq!(names, ["alice", "bob", "carol"]);
        assert_eq!(keys.find("sk-b").unwrap().limits.concurrent, Some(1));
        assert!(keys.find("sk-").is_none() && keys.find("").is_none());
        for (text, want) in [
            ("alice", "line 1: expected"),
            ("alice sk-a\nbob sk-b rpm=0", "line 2: rpm=0"),
            ("alice sk-a rate=5", "unknown limit `rate`"),
            ("alice sk-a 5", "`5` is not a limit"),
            ("alice rpm=5", "has no key"),
            ("a k1\na k2", "`a` is used twice"),
            ("a k1\nb k1", "repeats another"),
            ("# nothing\n", "no keys"),
        ] {
            let e = Keys::parse(text).unwrap_err();
            assert!(e.contains(want), "{text:?}: {e}");
            assert!(
                !e.contains("k1") || want.contains("k1"),
                "a key in an error: {e}"
            );
        }
    }

    #[test]
    fn each_limit_refuses_with_a_retry_after_and_refills() {
        let keys = Keys::parse("a ka rpm=2\nb kb concurrent=1\nc kc tpm=100").unwrap();
        let (a, b, c) = (
            keys.find("ka").unwrap(),
            keys.find("kb").unwrap(),
            keys.find("kc").unwrap(),
        );
        let t0 = Instant::now();
        // Two requests a minute: the third waits 30 s (one refills every 30 s).
        let _g1 = a.admit_at(t0).unwrap();
        let _g2 = a.admit_at(t0).unwrap();
        let e = a.admit_at(t0 + Duration::from_secs(1)).unwrap_err();
        assert_eq!((e.status.as_u16(), e.retry_after), (429, Some(29)));
        assert!(a.admit_at(t0 + Duration::from_secs(31)).is_ok());
        // One at a time: the second is refused until the first ends.
        let g = b.admit().unwrap();
        assert_eq!(b.admit().unwrap_err().status.as_u16(), 429);
        drop(g);
        assert!(b.admit().is_ok());
        // Tokens: a request that used 150 of 100 a minute blocks the key for ~31 s.
        let g = c.admit_at(t0).unwrap();
        c.charge_at(120, 30, t0);
        drop(g);
        let e = c.admit_at(t0).unwrap_err();
        assert_eq!(e.retry_after, Some(31));
        assert!(c.admit_at(t0 + Duration::from_secs(32)).is_ok());
        assert_eq!(c.usage.prompt_tokens.load(Ordering::Relaxed), 120);
        assert_eq!(a.usage.refused.load(Ordering::Relaxed), 1);
    }
}
