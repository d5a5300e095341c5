//! `redis://` URLs with celeriac's options.

use std::time::Duration;

/// A parsed `redis://` URL.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RedisOptions {
    /// The URL passed to the Redis client (celeriac's options removed).
    pub client_url: String,
    /// The URL with any password replaced by `***`, for logs.
    pub redacted: String,
    /// kombu's `visibility_timeout`: how long a claimed message may go
    /// without a lease renewal before it is restored (default 3600 s).
    pub visibility_timeout: Duration,
    /// kombu's `global_keyprefix`, prepended to every key and channel.
    pub prefix: String,
    /// Result TTL in seconds (Celery's `result_expires`, default one day;
    /// 0 keeps results forever).
    pub result_expires: u64,
}

/// Parses `redis://[:password@]host[:port][/db]` with optional
/// `?visibility_timeout=SECONDS`, `?global_keyprefix=PREFIX` and
/// `?result_expires=SECONDS`. `rediss://` and `redis+unix://` pass through to
/// the client.
///
/// # Examples
///
/// ```
/// use celeriac_redis::parse_redis_url;
/// let o = parse_redis_url("redis://:secret@127.0.0.1:6380/2?visibility_timeout=30&global_keyprefix=t1:").unwrap();
/// assert_eq!(o.client_url, "redis://:secret@127.0.0.1:6380/2");
/// assert_eq!(o.redacted, "redis://:***@127.0.0.1:6380/2");
/// assert_eq!(o.visibility_timeout.as_secs(), 30);
/// assert_eq!(o.prefix, "t1:");
/// ```
pub fn parse_redis_url(url: &str) -> Result<RedisOptions, String> {
    if !(url.starts_with("redis://")
        || url.starts_with("rediss://")
        || url.starts_with("redis+unix://"))
    {
        return Err("expected redis://, rediss:// or redis+unix://".into());
    }
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, q),
        None => (url, ""),
    };
    let mut opts = RedisOptions {
        client_url: base.to_string(),
        redacted: redact(base),
        visibility_timeout: Duration::from_secs(3600),
        prefix: String::new(),
        result_expires: 86_400,
    };
    let mut passthrough = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "visibility_timeout" => {
                let secs: f64 = v
                    .parse()
                    .map_err(|_| "visibility_timeout must be seconds")?;
                if !(secs > 0.0 && secs.is_finite()) {
                    return Err("visibility_timeout must be positive".into());
                }
                opts.visibility_timeout = Duration::from_secs_f64(secs);
            }
            "global_keyprefix" => opts.prefix = v.to_string(),
            "result_expires" => {
                opts.result_expires = v
                    .parse()
                    .map_err(|_| "result_expires must be whole seconds")?;
            }
            _ => passthrough.push(pair),
        }
    }
    if !passthrough.is_empty() {
        opts.client_url = format!("{base}?{}", passthrough.join("&"));
    }
    Ok(opts)
}

fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.split_once('@') {
        Some((auth, host)) => {
            let user = auth.split_once(':').map_or("", |(u, _)| u);
            format!("{scheme}://{user}:***@{host}")
        }
        None => url.to_string(),
    }
}
