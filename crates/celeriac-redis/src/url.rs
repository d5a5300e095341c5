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
                opts.visibility_timeout = positive_seconds(secs)
                    .ok_or("visibility_timeout must be a positive number of seconds")?;
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

/// `secs` as a duration, if it is positive and not too large for one
/// (`Duration::from_secs_f64` panics past about 584 billion years).
fn positive_seconds(secs: f64) -> Option<Duration> {
    if secs > 0.0 {
        Duration::try_from_secs_f64(secs)
            .ok()
            .filter(|d| !d.is_zero())
    } else {
        None
    }
}

/// The URL with everything between `://` and its **last** `@` masked but
/// the user name: the URL parser of the Redis client ends the user info at
/// the last `@`, so a password containing `@` (or `/`, which makes the
/// URL invalid and shows up in the error) is masked whole.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.rsplit_once('@') {
        Some((auth, host)) => {
            let user = auth
                .split_once(':')
                .map_or("", |(u, _)| u)
                .split(['/', '?', '#'])
                .next()
                .unwrap_or_default();
            format!("{scheme}://{user}:***@{host}")
        }
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_huge_visibility_timeout_is_an_error_not_a_panic() {
        for v in ["1e30", "1e300", "18446744073709551616", "5e-324"] {
            let url = format!("redis://localhost/0?visibility_timeout={v}");
            let err = parse_redis_url(&url).unwrap_err();
            assert!(err.contains("visibility_timeout"), "{v}: {err}");
        }
        let o = parse_redis_url("redis://localhost/0?visibility_timeout=0.5").unwrap();
        assert_eq!(o.visibility_timeout, Duration::from_millis(500));
    }

    #[test]
    fn a_password_with_an_at_sign_is_masked_whole() {
        let o = parse_redis_url("redis://user:p@ss@word@10.0.0.1:6380/2").unwrap();
        assert_eq!(o.redacted, "redis://user:***@10.0.0.1:6380/2");
        let o = parse_redis_url("redis://:pa/ss@host/0").unwrap();
        assert_eq!(o.redacted, "redis://:***@host/0");
        let o = parse_redis_url("redis://host:6379/0").unwrap();
        assert_eq!(o.redacted, "redis://host:6379/0");
    }
}
