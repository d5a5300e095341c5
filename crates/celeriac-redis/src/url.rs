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
    /// For `rediss://`: the certificate files named by kombu's
    /// `ssl_ca_certs`, `ssl_certfile` and `ssl_keyfile` options.
    pub tls: TlsFiles,
}

/// Certificate files for `rediss://` (PEM), as kombu names them in the URL.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct TlsFiles {
    /// `ssl_ca_certs`: the CA bundle that verifies the server, instead of
    /// the system's roots.
    pub ca_certs: Option<std::path::PathBuf>,
    /// `ssl_certfile`: this client's certificate (mutual TLS).
    pub certfile: Option<std::path::PathBuf>,
    /// `ssl_keyfile`: the key of `ssl_certfile`.
    pub keyfile: Option<std::path::PathBuf>,
}

impl RedisOptions {
    /// The Redis client for these options: TLS with the configured
    /// certificate files for `rediss://`, else a plain one. Errors name the
    /// file or the option that is wrong.
    pub fn client(&self) -> Result<redis::Client, String> {
        install_crypto_provider();
        let TlsFiles {
            ca_certs,
            certfile,
            keyfile,
        } = &self.tls;
        if ca_certs.is_none() && certfile.is_none() {
            return redis::Client::open(self.client_url.as_str()).map_err(|e| e.to_string());
        }
        let read = |what: &str, p: &std::path::Path| {
            std::fs::read(p).map_err(|e| format!("{what} {}: {e}", p.display()))
        };
        let client_tls = match (certfile, keyfile) {
            (Some(c), Some(k)) => Some(redis::ClientTlsConfig {
                client_cert: read("ssl_certfile", c)?,
                client_key: read("ssl_keyfile", k)?,
            }),
            (None, None) => None,
            _ => return Err("ssl_certfile and ssl_keyfile go together".into()),
        };
        let root_cert = ca_certs
            .as_deref()
            .map(|p| read("ssl_ca_certs", p))
            .transpose()?;
        redis::Client::build_with_tls(
            self.client_url.as_str(),
            redis::TlsCertificates {
                client_tls,
                root_cert,
            },
        )
        .map_err(|e| e.to_string())
    }
}

/// rustls needs a process-wide crypto provider; `ring` is the one we build.
/// Installing it twice (or after the application chose its own) is fine.
fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// Parses `redis://[:password@]host[:port][/db]` with optional
/// `?visibility_timeout=SECONDS`, `?global_keyprefix=PREFIX` and
/// `?result_expires=SECONDS`. `rediss://` and `redis+unix://` pass through to
/// the client, with the options it reads: `protocol` (2 or 3), and for
/// `redis+unix://` also `db`, `user` and `pass`. `rediss://` takes kombu's
/// TLS options: `ssl_ca_certs`, `ssl_certfile`, `ssl_keyfile` (PEM file
/// paths) and `ssl_cert_reqs` (`required`, the default, or `none` to skip
/// verifying the server, for tests only). Any other option is an error, so
/// that a misspelt one is not silently ignored.
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
/// let e = parse_redis_url("redis://127.0.0.1/0?visibilty_timeout=30").unwrap_err();
/// assert!(e.contains("unknown option \"visibilty_timeout\""), "{e}");
/// ```
pub fn parse_redis_url(url: &str) -> Result<RedisOptions, String> {
    let unix = url.starts_with("redis+unix://");
    if !(url.starts_with("redis://") || url.starts_with("rediss://") || unix) {
        return Err("expected redis://, rediss:// or redis+unix://".into());
    }
    // `rediss://host/0?protocol=3#insecure`: the fragment goes to the client.
    let (url, fragment) = match url.split_once('#') {
        Some((u, f)) => (u, Some(f)),
        None => (url, None),
    };
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
        tls: TlsFiles::default(),
    };
    let tls = url.starts_with("rediss://");
    let mut insecure = false;
    let mut passthrough = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "visibility_timeout" => {
                let secs: f64 = v
                    .parse()
                    .map_err(|_| "visibility_timeout must be seconds")?;
                opts.visibility_timeout = celeriac_core::time::checked_seconds(secs)
                    .ok()
                    .filter(|d| !d.is_zero())
                    .ok_or("visibility_timeout must be a positive number of seconds, at most 100 years")?;
            }
            "global_keyprefix" => opts.prefix = v.to_string(),
            "result_expires" => {
                opts.result_expires = v
                    .parse()
                    .ok()
                    .filter(|&s| s as f64 <= celeriac_core::time::MAX_SECONDS)
                    .ok_or("result_expires must be whole seconds, at most 100 years")?;
            }
            "protocol" => passthrough.push(pair),
            "ssl_ca_certs" | "ssl_certfile" | "ssl_keyfile" | "ssl_cert_reqs" if !tls => {
                return Err(format!("{k} needs a rediss:// URL"));
            }
            "ssl_ca_certs" => opts.tls.ca_certs = Some(tls_path(k, v)?),
            "ssl_certfile" => opts.tls.certfile = Some(tls_path(k, v)?),
            "ssl_keyfile" => opts.tls.keyfile = Some(tls_path(k, v)?),
            "ssl_cert_reqs" => {
                insecure = match v.to_ascii_lowercase().trim_start_matches("cert_") {
                    "required" => false,
                    "none" => true,
                    _ => {
                        return Err(format!(
                            "ssl_cert_reqs must be required or none, got {v:?} \
                             (optional is not supported: a certificate that is \
                             sent is always verified)"
                        ));
                    }
                }
            }
            "db" | "user" | "pass" if unix => passthrough.push(pair),
            other => {
                let known = if unix {
                    "visibility_timeout, global_keyprefix, result_expires, protocol, db, user, pass"
                } else if tls {
                    "visibility_timeout, global_keyprefix, result_expires, protocol, \
                     ssl_ca_certs, ssl_certfile, ssl_keyfile, ssl_cert_reqs"
                } else {
                    "visibility_timeout, global_keyprefix, result_expires, protocol"
                };
                return Err(format!("unknown option {other:?} (known: {known})"));
            }
        }
    }
    if !passthrough.is_empty() {
        opts.client_url = format!("{base}?{}", passthrough.join("&"));
    }
    let fragment = match (fragment, insecure) {
        (Some(f), _) => Some(f),
        (None, true) => Some("insecure"),
        (None, false) => None,
    };
    if let Some(f) = fragment {
        opts.client_url = format!("{}#{f}", opts.client_url);
    }
    Ok(opts)
}

/// A TLS file option: a non-empty path, percent-decoded for the common
/// escapes of `/` and spaces.
fn tls_path(key: &str, v: &str) -> Result<std::path::PathBuf, String> {
    let decoded = v
        .replace("%2F", "/")
        .replace("%2f", "/")
        .replace("%20", " ");
    if decoded.is_empty() {
        return Err(format!("{key} needs a file path"));
    }
    Ok(decoded.into())
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

    #[test]
    fn unknown_options_and_impossible_values_are_errors() {
        for bad in [
            "redis://127.0.0.1/0?bogus=1",
            "redis://127.0.0.1/0?visibility_timeout=30&bogus",
            "redis://127.0.0.1/0?db=3",
            "redis://127.0.0.1/0?visibility_timeout=1e30",
            "redis://127.0.0.1/0?visibility_timeout=0",
            "redis://127.0.0.1/0?visibility_timeout=nan",
            "redis://127.0.0.1/0?result_expires=18446744073709551615",
        ] {
            assert!(parse_redis_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_client_gets_the_options_it_reads_and_the_fragment() {
        let o =
            parse_redis_url("rediss://h:6380/1?protocol=3&global_keyprefix=p:#insecure").unwrap();
        assert_eq!(o.client_url, "rediss://h:6380/1?protocol=3#insecure");
        assert_eq!(o.prefix, "p:");
        let o = parse_redis_url("redis+unix:///run/redis.sock?db=2&pass=x").unwrap();
        assert_eq!(o.client_url, "redis+unix:///run/redis.sock?db=2&pass=x");
        redis::Client::open(o.client_url.as_str()).unwrap();
    }
}
