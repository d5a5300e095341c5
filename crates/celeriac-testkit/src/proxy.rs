//! A loopback TCP proxy that loses replies on purpose.
//!
//! [`FaultProxy`] forwards every connection made to it to an upstream
//! server on `127.0.0.1` (a private `redis-server`), byte for byte, both
//! ways. Armed with [`FaultProxy::lose_reply_to`], it waits for the next
//! request that contains a given byte string, forwards it, and then cuts
//! that client's connection before the reply reaches it: the server has
//! received (and will carry out) the request, and the client sees a
//! dropped connection. That is the fault of a broker restart or a network
//! cut between a request and its reply.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

/// A proxy on a free loopback port; see the [module docs](self). It stops
/// accepting when dropped (connections already open keep forwarding until
/// either side closes them).
///
/// # Examples
///
/// ```no_run
/// use celeriac_testkit::proxy::FaultProxy;
///
/// let proxy = FaultProxy::start(6379);
/// // The next request that names this key is delivered, its reply is not.
/// proxy.lose_reply_to(b"celeriac.deliveries");
/// let url = proxy.redis_url("");
/// # let _ = url;
/// ```
#[derive(Debug)]
pub struct FaultProxy {
    port: u16,
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    /// The byte string whose next request loses its reply (one-shot).
    armed: Mutex<Option<Vec<u8>>>,
    /// Connections cut so far.
    cut: AtomicUsize,
    stopped: AtomicBool,
}

impl FaultProxy {
    /// Starts forwarding a free loopback port to `127.0.0.1:upstream_port`.
    pub fn start(upstream_port: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let port = listener.local_addr().expect("local address").port();
        let shared = Arc::new(Shared::default());
        let accept = shared.clone();
        thread::spawn(move || {
            for client in listener.incoming() {
                if accept.stopped.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream_port)) else {
                    // The upstream is down: the client sees its connection
                    // closed, as it would with no proxy.
                    continue;
                };
                pair(client, server, accept.clone());
            }
        });
        FaultProxy { port, shared }
    }

    /// The proxy's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT/0` followed by `query`, through the proxy.
    pub fn redis_url(&self, query: &str) -> String {
        format!("redis://127.0.0.1:{}/0{query}", self.port)
    }

    /// Arms the proxy, once: the next request containing `needle` is
    /// forwarded, and its client's connection is then cut before the reply
    /// comes back (the reply is read from the server and discarded).
    pub fn lose_reply_to(&self, needle: &[u8]) {
        assert!(!needle.is_empty(), "an empty needle matches everything");
        *self.shared.armed.lock().unwrap() = Some(needle.to_vec());
    }

    /// How many connections the proxy has cut.
    pub fn cuts(&self) -> usize {
        self.shared.cut.load(Ordering::SeqCst)
    }

    /// Whether the proxy is still armed (no request matched yet).
    pub fn is_armed(&self) -> bool {
        self.shared.armed.lock().unwrap().is_some()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stopped.store(true, Ordering::SeqCst);
        // Wake the accept loop so that it sees `stopped`.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Forwards one client connection to its server connection, both ways, on
/// two threads.
fn pair(client: TcpStream, server: TcpStream, shared: Arc<Shared>) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    // Set once the client's connection is cut: from then on, what the
    // server sends is read and discarded.
    let cut = Arc::new(AtomicBool::new(false));
    let (Ok(client_w), Ok(server_w)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    let down_cut = cut.clone();
    thread::spawn(move || up(client, server_w, &shared, &cut));
    thread::spawn(move || down(server, client_w, &down_cut));
}

/// Client → server. Watches for the armed needle (also across two reads).
fn up(mut client: TcpStream, mut server: TcpStream, shared: &Shared, cut: &AtomicBool) {
    let mut buf = vec![0u8; 64 * 1024];
    // The end of the previous reads, so that a needle split across two
    // reads is seen.
    let mut tail: Vec<u8> = Vec::new();
    loop {
        let n = match client.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let chunk = &buf[..n];
        let hit = {
            let mut armed = shared.armed.lock().unwrap();
            let hit = armed.as_ref().is_some_and(|needle| {
                let mut seen = std::mem::take(&mut tail);
                seen.extend_from_slice(chunk);
                let found = seen.windows(needle.len()).any(|w| w == needle.as_slice());
                let keep = needle.len() - 1;
                tail = seen.split_off(seen.len().saturating_sub(keep));
                found
            });
            if hit {
                *armed = None;
            }
            hit
        };
        if hit {
            // Cut first, so that no byte of the reply can reach the client.
            cut.store(true, Ordering::SeqCst);
        }
        if server.write_all(chunk).is_err() {
            break;
        }
        if hit {
            // The request is on its way to the server; the client never
            // sees its reply.
            shared.cut.fetch_add(1, Ordering::SeqCst);
            let _ = client.shutdown(Shutdown::Both);
            break;
        }
    }
    // Closing our write side lets the server finish what it received and
    // then close the connection, which ends `down`.
    let _ = server.shutdown(Shutdown::Write);
}

/// Server → client, until either side closes; after a cut, the server's
/// replies are read and discarded.
fn down(mut server: TcpStream, mut client: TcpStream, cut: &AtomicBool) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match server.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if cut.load(Ordering::SeqCst) {
            continue;
        }
        if client.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = client.shutdown(Shutdown::Both);
}
