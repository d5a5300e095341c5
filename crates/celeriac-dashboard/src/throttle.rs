//! Guessing the token is slow: a client address whose requests carried
//! wrong credentials [`MAX_FAILURES`] times within [`WINDOW`] is answered
//! `429 Too Many Requests` (with `Retry-After`) until the window ends,
//! even if it then sends the right token.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::server::Hub;

/// Wrong credentials one address may send within [`WINDOW`].
pub(crate) const MAX_FAILURES: u32 = 10;

/// How long failures are remembered, and how long a lockout lasts at most.
pub(crate) const WINDOW: Duration = Duration::from_secs(60);

/// The addresses remembered at most; past it, expired ones are forgotten
/// first, then the oldest.
const MAX_ADDRESSES: usize = 10_000;

#[derive(Debug, Clone, Copy)]
struct Failures {
    first: Instant,
    count: u32,
}

/// Failed credentials per client address.
#[derive(Debug, Default)]
pub(crate) struct Throttle {
    by_addr: Mutex<HashMap<IpAddr, Failures>>,
}

impl Throttle {
    /// How long `ip` must wait, if it is locked out now.
    fn locked_for(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let map = self.by_addr.lock().unwrap_or_else(|e| e.into_inner());
        let f = map.get(&ip)?;
        let left = WINDOW.checked_sub(now.duration_since(f.first))?;
        (f.count >= MAX_FAILURES && !left.is_zero()).then_some(left)
    }

    fn failed(&self, ip: IpAddr, now: Instant) {
        let mut map = self.by_addr.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_ADDRESSES && !map.contains_key(&ip) {
            map.retain(|_, f| now.duration_since(f.first) < WINDOW);
            if map.len() >= MAX_ADDRESSES
                && let Some(oldest) = map.iter().min_by_key(|(_, f)| f.first).map(|(k, _)| *k)
            {
                map.remove(&oldest);
            }
        }
        let f = map.entry(ip).or_insert(Failures {
            first: now,
            count: 0,
        });
        if now.duration_since(f.first) >= WINDOW {
            *f = Failures {
                first: now,
                count: 0,
            };
        }
        f.count += 1;
        if f.count == MAX_FAILURES {
            tracing::warn!(
                %ip,
                "dashboard: {MAX_FAILURES} wrong credentials within {} s; refusing this address until the window ends",
                WINDOW.as_secs()
            );
        }
    }

    fn succeeded(&self, ip: IpAddr) {
        let mut map = self.by_addr.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(&ip);
    }
}

/// Whether a request offers credentials: a bearer header, the login form,
/// or the login cookie. A browser that merely has none is not guessing.
fn offers_credentials(req: &Request) -> bool {
    let h = req.headers();
    h.contains_key(header::AUTHORIZATION)
        || (req.method() == Method::POST && req.uri().path() == "/login")
        || h.get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.contains(crate::auth::COOKIE))
}

/// The layer outside the login form and the guard: refuses a locked-out
/// address, and counts the 401s its credentials earn.
pub(crate) async fn layer(State(hub): State<Arc<Hub>>, req: Request, next: Next) -> Response {
    if !hub.auth.has_token() {
        return next.run(req).await;
    }
    // Behind a proxy every client has the proxy's address: the limit is
    // then shared, which still bounds the guessing rate.
    let ip = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip());
    let now = Instant::now();
    if let Some(left) = hub.throttle.locked_for(ip, now) {
        let secs = left.as_secs().max(1);
        let mut r = (
            StatusCode::TOO_MANY_REQUESTS,
            format!("too many wrong tokens from this address; try again in {secs} s\n"),
        )
            .into_response();
        if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return r;
    }
    let offered = offers_credentials(&req);
    let r = next.run(req).await;
    if offered {
        if r.status() == StatusCode::UNAUTHORIZED {
            hub.throttle.failed(ip, now);
        } else if r.status().is_success() || r.status().is_redirection() {
            hub.throttle.succeeded(ip);
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_locked_after_the_limit_until_the_window_ends() {
        let t = Throttle::default();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..MAX_FAILURES - 1 {
            t.failed(a, t0);
        }
        assert_eq!(t.locked_for(a, t0), None, "below the limit");
        t.failed(a, t0);
        assert!(t.locked_for(a, t0 + Duration::from_secs(1)).is_some());
        assert_eq!(t.locked_for(b, t0), None, "another address is not");
        assert_eq!(t.locked_for(a, t0 + WINDOW), None, "the window ended");
        // A failure after the window starts a new count.
        t.failed(a, t0 + WINDOW);
        assert_eq!(t.locked_for(a, t0 + WINDOW), None);
        // A success forgets the failures.
        for _ in 0..MAX_FAILURES - 1 {
            t.failed(b, t0);
        }
        t.succeeded(b);
        t.failed(b, t0);
        assert_eq!(t.locked_for(b, t0), None);
    }

    #[test]
    fn the_table_stays_bounded() {
        let t = Throttle::default();
        let t0 = Instant::now();
        for i in 0..(MAX_ADDRESSES as u32 + 50) {
            t.failed(IpAddr::V4(Ipv4Addr::from(i)), t0);
        }
        assert!(t.by_addr.lock().unwrap().len() <= MAX_ADDRESSES);
    }
}
