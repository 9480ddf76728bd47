//! Fetching the TaskManager's exposition over HTTP, and the retry backoff while it is down.

use std::time::Duration;

/// Why a scrape failed.
#[derive(Debug, thiserror::Error)]
pub enum ScrapeError {
    #[error("cannot connect to {url}: {source}")]
    Connect { url: String, source: reqwest::Error },
    #[error("no answer from {url} within {timeout:?}")]
    Timeout { url: String, timeout: Duration },
    #[error("{url} answered HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("reading the body of {url}: {source}")]
    Body { url: String, source: reqwest::Error },
}

impl ScrapeError {
    /// A bounded label for metrics (`error_type`).
    pub fn kind(&self) -> &'static str {
        match self {
            ScrapeError::Connect { .. } => "connect",
            ScrapeError::Timeout { .. } => "timeout",
            ScrapeError::Status { .. } => "http_status",
            ScrapeError::Body { .. } => "body",
        }
    }
}

/// An HTTP client for one metrics URL.
#[derive(Debug, Clone)]
pub struct Scraper {
    client: reqwest::Client,
    url: String,
    timeout: Duration,
}

impl Scraper {
    pub fn new(url: impl Into<String>, timeout: Duration) -> Result<Self, reqwest::Error> {
        let url = url.into();
        let mut builder = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .no_proxy()
            .pool_max_idle_per_host(1)
            .user_agent(concat!("demeter-agent/", env!("CARGO_PKG_VERSION")));
        if url.starts_with("http://") {
            // Plain HTTP (the normal case: the TaskManager on localhost) needs no trust store;
            // loading the system's CA roots would cost about a megabyte of resident memory.
            builder = builder.tls_certs_only(std::iter::empty());
        }
        Ok(Scraper { client: builder.build()?, url, timeout })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Fetches the exposition. Invalid UTF-8 is replaced (the parser then reports the lines).
    pub async fn scrape(&self) -> Result<String, ScrapeError> {
        let url = || self.url.clone();
        let classify = |e: reqwest::Error| {
            if e.is_timeout() {
                ScrapeError::Timeout { url: url(), timeout: self.timeout }
            } else {
                ScrapeError::Connect { url: url(), source: e }
            }
        };
        let resp = self.client.get(&self.url).send().await.map_err(classify)?;
        if !resp.status().is_success() {
            return Err(ScrapeError::Status { url: url(), status: resp.status().as_u16() });
        }
        let body = resp.bytes().await.map_err(|e| {
            if e.is_timeout() {
                ScrapeError::Timeout { url: url(), timeout: self.timeout }
            } else {
                ScrapeError::Body { url: url(), source: e }
            }
        })?;
        Ok(match String::from_utf8(body.into()) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        })
    }
}

/// The wait before retry number `failures` (1-based): the interval doubled per failure, capped
/// at `max`, with ±10 % jitter from `jitter` in `0..1` so that the agents of one deployment do
/// not retry in lockstep.
pub fn backoff(interval: Duration, max: Duration, failures: u32, jitter: f64) -> Duration {
    let exp = failures.saturating_sub(1).min(20);
    let base = interval.saturating_mul(1u32 << exp).min(max);
    base.mul_f64(0.9 + 0.2 * jitter.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let s = Duration::from_secs;
        let b = |n| backoff(s(1), s(5), n, 0.5);
        assert_eq!([b(1), b(2), b(3), b(4), b(30)], [s(1), s(2), s(4), s(5), s(5)]);
        assert_eq!(backoff(s(1), s(5), 1, 0.0), Duration::from_millis(900));
        assert_eq!(backoff(s(1), s(5), 1, 1.0), Duration::from_millis(1100));
    }

    #[tokio::test]
    async fn a_dead_endpoint_is_a_connect_error() {
        // Bind and close a port so that nothing listens there.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let s = Scraper::new(format!("http://127.0.0.1:{port}/metrics"), Duration::from_millis(500)).unwrap();
        let err = s.scrape().await.unwrap_err();
        assert_eq!(err.kind(), "connect", "{err}");
    }
}
