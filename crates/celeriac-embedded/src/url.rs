//! Parsing of `sqlite://` URLs and the default database location.

use std::path::PathBuf;

use celeriac_core::BrokerError;

/// Options of a `sqlite://` URL.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct SqliteOptions {
    /// The database file.
    pub path: PathBuf,
    /// The claim lease (`?lease=SECONDS`).
    pub lease: std::time::Duration,
    /// `?sync=full` makes every commit durable against power loss; the
    /// default (`normal`) is durable against process crashes.
    pub full_sync: bool,
    /// Whether a missing directory for the file is created: only for the
    /// [default location](default_db_path). A path the URL names must be
    /// in a directory that exists, so that a typo is an error instead of a
    /// new, empty broker that no worker reads.
    pub create_dir: bool,
}

/// The default database file: `$CELERIAC_HOME/celeriac.db`, else
/// `$XDG_DATA_HOME/celeriac/celeriac.db`, else
/// `~/.local/share/celeriac/celeriac.db`, else `./celeriac.db`.
pub fn default_db_path() -> PathBuf {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    if let Some(home) = env("CELERIAC_HOME") {
        return PathBuf::from(home).join("celeriac.db");
    }
    if let Some(xdg) = env("XDG_DATA_HOME") {
        return PathBuf::from(xdg).join("celeriac").join("celeriac.db");
    }
    if let Some(home) = env("HOME") {
        return PathBuf::from(home)
            .join(".local")
            .join("share")
            .join("celeriac")
            .join("celeriac.db");
    }
    PathBuf::from("celeriac.db")
}

/// Parses `sqlite:///abs/path.db`, `sqlite://relative.db` or `sqlite://`
/// (the [default path](default_db_path)), with optional `?lease=SECONDS` and
/// `?sync=full|normal`. Any other option is an error.
///
/// # Examples
///
/// ```
/// use celeriac_embedded::parse_sqlite_url;
/// let o = parse_sqlite_url("sqlite:///tmp/q.db?lease=5").unwrap();
/// assert_eq!(o.path, std::path::PathBuf::from("/tmp/q.db"));
/// assert_eq!(o.lease, std::time::Duration::from_secs(5));
/// assert!(!o.create_dir);
/// assert!(parse_sqlite_url("sqlite://").unwrap().create_dir);
/// assert!(parse_sqlite_url("redis://x").is_err());
/// assert!(parse_sqlite_url("sqlite:///tmp/q.db?bogus=1").is_err());
/// assert!(parse_sqlite_url("sqlite:///tmp/q.db?lease=1e30").is_err());
/// ```
pub fn parse_sqlite_url(url: &str) -> Result<SqliteOptions, BrokerError> {
    let bad = |reason: &str| BrokerError::InvalidUrl {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    let rest = url
        .strip_prefix("sqlite://")
        .ok_or_else(|| bad("expected sqlite://PATH"))?;
    let (path, query) = match rest.split_once('?') {
        Some((p, q)) => (p, q),
        None => (rest, ""),
    };
    let default = default_db_path();
    let path = if path.is_empty() {
        default.clone()
    } else {
        PathBuf::from(path)
    };
    let mut opts = SqliteOptions {
        create_dir: path == default,
        path,
        lease: crate::DEFAULT_LEASE,
        full_sync: false,
    };
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "lease" => {
                let secs: f64 = v
                    .parse()
                    .map_err(|_| bad("lease must be a number of seconds"))?;
                opts.lease = celeriac_core::time::checked_seconds(secs)
                    .ok()
                    .filter(|d| !d.is_zero())
                    .ok_or_else(|| {
                        bad("lease must be a positive number of seconds, at most 100 years")
                    })?;
            }
            "sync" => match v {
                "full" => opts.full_sync = true,
                "normal" => opts.full_sync = false,
                _ => return Err(bad("sync must be full or normal")),
            },
            other => return Err(bad(&format!("unknown option {other:?}"))),
        }
    }
    Ok(opts)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_huge_or_tiny_lease_is_an_error_not_a_panic() {
        for v in ["1e30", "1e300", "inf", "NaN", "0", "-1", "5e-324"] {
            let err = parse_sqlite_url(&format!("sqlite:///tmp/x.db?lease={v}")).unwrap_err();
            assert!(err.to_string().contains("lease"), "{v}: {err}");
        }
        let o = parse_sqlite_url("sqlite:///tmp/x.db?lease=0.25").unwrap();
        assert_eq!(o.lease, Duration::from_millis(250));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]

        #[test]
        fn any_text_is_parsed_or_refused(rest in "\\PC{0,60}") {
            if let Ok(o) = parse_sqlite_url(&format!("sqlite://{rest}")) {
                proptest::prop_assert!(!o.lease.is_zero());
            }
        }

        #[test]
        fn options_round_trip(
            path in "/[a-z0-9_./-]{1,30}",
            millis in 1u64..10_000_000_000,
            full in proptest::prelude::any::<bool>(),
        ) {
            let secs = millis as f64 / 1000.0;
            let sync = if full { "full" } else { "normal" };
            let o = parse_sqlite_url(&format!("sqlite://{path}?lease={secs}&sync={sync}")).unwrap();
            proptest::prop_assert_eq!(o.path, PathBuf::from(&path));
            proptest::prop_assert_eq!(o.lease, Duration::from_secs_f64(secs));
            proptest::prop_assert_eq!(o.full_sync, full);
        }
    }
}
