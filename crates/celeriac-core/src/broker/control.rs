//! [`Control`]: remote control of workers, as Celery does it with kombu's
//! pidbox. A client broadcasts a [`ControlRequest`] (`ping`, `stats`,
//! `pool_grow`, ...) to every worker on the broker; each worker that the
//! request names ([`ControlRequest::matches`]) handles it and, when the
//! request carries a [`ReplyTo`], sends a [`ControlReply`] of the form
//! `{node: value}` to the client's reply mailbox.
//!
//! The same trait is implemented on Celery's wire where one exists (Redis:
//! the `celery.pidbox` fanout and the `reply.celery.pidbox` exchange), so
//! `celery inspect` reaches celeriac workers and `celeriac inspect` reaches
//! Python ones, and in the embedded brokers' own storage otherwise.
//!
//! `purge` lives here too, as Celery has it under `app.control`.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::Stream;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::BrokerError;

/// The exchange replies go to (kombu's `reply.celery.pidbox`).
pub const REPLY_EXCHANGE: &str = "reply.celery.pidbox";

/// How long a client waits for the next reply by default (Celery's
/// `inspect` and `control` default, one second).
pub const DEFAULT_REPLY_TIMEOUT: Duration = Duration::from_secs(1);

/// Where a worker sends its reply: the reply exchange and the client's
/// mailbox id (kombu's `oid`) as the routing key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyTo {
    /// The reply exchange, [`REPLY_EXCHANGE`].
    pub exchange: String,
    /// The client's mailbox id.
    pub routing_key: String,
}

/// A remote-control request: the body kombu's `Mailbox._publish` sends,
/// plus its `clock` and `expires` headers.
///
/// # Examples
///
/// ```
/// use celeriac_core::broker::ControlRequest;
///
/// let req = ControlRequest::new("ping").to_nodes(["w1@example"]);
/// assert!(req.matches("w1@example"));
/// assert!(!req.matches("w2@example"));
/// let all = ControlRequest::new("stats").matching("w*@example", "glob");
/// assert!(all.matches("w2@example"));
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ControlRequest {
    /// The command, e.g. `ping`.
    pub method: String,
    /// Its keyword arguments.
    #[serde(default)]
    pub arguments: Map<String, Value>,
    /// The node names it is for; `None` (or empty) for every node.
    #[serde(default)]
    pub destination: Option<Vec<String>>,
    /// A pattern node names must match (with `matcher`).
    #[serde(default)]
    pub pattern: Option<String>,
    /// How `pattern` matches: `glob` (fnmatch) or `pcre` (a regular
    /// expression matched at the start of the name).
    #[serde(default)]
    pub matcher: Option<String>,
    /// The reply ticket; absent on a cast (no reply wanted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket: Option<String>,
    /// Where to reply; absent on a cast.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<ReplyTo>,
    /// The sender's Lamport clock (the `clock` header).
    #[serde(skip)]
    pub clock: u64,
    /// Unix time after which the sender stops listening (the `expires`
    /// header; 0 without a timeout). Workers do not check it, as in kombu.
    #[serde(skip)]
    pub expires: f64,
}

impl ControlRequest {
    /// A request for every node, without arguments, as a cast.
    pub fn new(method: impl Into<String>) -> Self {
        ControlRequest {
            method: method.into(),
            arguments: Map::new(),
            destination: None,
            pattern: None,
            matcher: None,
            ticket: None,
            reply_to: None,
            clock: 0,
            expires: 0.0,
        }
    }

    /// Adds a keyword argument.
    pub fn arg(mut self, name: &str, value: impl Into<Value>) -> Self {
        self.arguments.insert(name.to_string(), value.into());
        self
    }

    /// Only for these nodes.
    pub fn to_nodes<I, S>(mut self, nodes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.destination = Some(nodes.into_iter().map(Into::into).collect());
        self
    }

    /// Only for nodes whose name matches `pattern` with `matcher` (`glob`
    /// or `pcre`).
    pub fn matching(mut self, pattern: &str, matcher: &str) -> Self {
        self.pattern = Some(pattern.to_string());
        self.matcher = Some(matcher.to_string());
        self
    }

    /// Whether node `node` acts on this request, as kombu's
    /// `Node.handle_message` decides: a non-empty `destination` must name
    /// it; otherwise a `pattern` with a `matcher` must match it; otherwise
    /// every node acts. An unknown matcher matches nothing.
    pub fn matches(&self, node: &str) -> bool {
        if let Some(dest) = self.destination.as_ref().filter(|d| !d.is_empty()) {
            return dest.iter().any(|d| d == node);
        }
        match (self.pattern.as_deref(), self.matcher.as_deref()) {
            (Some(p), Some(m)) if !p.is_empty() && !m.is_empty() => match m {
                "glob" => glob_match(p, node),
                "pcre" => regex::Regex::new(&format!("^(?:{p})"))
                    .map(|re| re.is_match(node))
                    .unwrap_or(false),
                _ => false,
            },
            _ => true,
        }
    }

    /// Whether a reply is wanted.
    pub fn wants_reply(&self) -> bool {
        self.reply_to.is_some()
    }

    /// The task ids a `revoke` (or `terminate`) request names, and whether
    /// it terminates; `None` for any other method. Brokers that record
    /// revokes durably read broadcasts with it.
    ///
    /// # Examples
    ///
    /// ```
    /// use celeriac_core::broker::ControlRequest;
    ///
    /// let r = ControlRequest::new("revoke").arg("task_id", "a").arg("terminate", true);
    /// assert_eq!(r.revoke(), Some((vec!["a".to_string()], true)));
    /// assert_eq!(ControlRequest::new("ping").revoke(), None);
    /// ```
    pub fn revoke(&self) -> Option<(Vec<String>, bool)> {
        if self.method != "revoke" && self.method != "terminate" {
            return None;
        }
        let ids = match self.arguments.get("task_id") {
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect(),
            _ => Vec::new(),
        };
        let terminate = self.method == "terminate"
            || self.arguments.get("terminate") == Some(&Value::Bool(true));
        Some((ids, terminate))
    }
}

/// One node's reply to a request: `body` is `{node: value}`.
#[derive(Debug, Clone, PartialEq)]
pub struct ControlReply {
    /// The ticket of the request answered.
    pub ticket: String,
    /// The replying node's Lamport clock.
    pub clock: u64,
    /// `{node name: reply value}`.
    pub body: Map<String, Value>,
}

/// The requests broadcast to a listening node, in the order sent; see
/// [`Control::listen`]. Ends only when the broker handle is dropped.
pub struct ControlInbox(BoxStream<'static, ControlRequest>);

impl ControlInbox {
    /// Wraps a stream of requests.
    pub fn new(stream: impl Stream<Item = ControlRequest> + Send + 'static) -> Self {
        ControlInbox(Box::pin(stream))
    }

    /// The next request, or `None` when the inbox has ended.
    pub async fn recv(&mut self) -> Option<ControlRequest> {
        futures::StreamExt::next(&mut self.0).await
    }
}

impl fmt::Debug for ControlInbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ControlInbox")
    }
}

impl Stream for ControlInbox {
    type Item = ControlRequest;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<ControlRequest>> {
        self.0.as_mut().poll_next(cx)
    }
}

/// The remote-control capability of a broker (Celery's pidbox): broadcast
/// [`ControlRequest`]s to every worker; each worker the request names
/// answers `{node: value}` to the asking client's reply mailbox; and purge
/// queues (Celery has `purge` under `app.control` too). On Redis this is
/// kombu's wire, so Python Celery workers and clients take part.
#[async_trait]
pub trait Control: Send + Sync + fmt::Debug {
    /// Sends `request` to every node listening on this broker now (a
    /// fanout: nodes that start later never see it). A broker that records
    /// revokes durably also records a `revoke` request it carries, so that
    /// a broadcast revoke is honoured like [`Revocations::revoke`].
    ///
    /// [`Revocations::revoke`]: super::Revocations::revoke
    async fn broadcast(&self, request: &ControlRequest) -> Result<(), BrokerError>;

    /// Starts receiving the requests broadcast from now on, as node `node`
    /// (every request: the node filters them with
    /// [`ControlRequest::matches`]). The subscription is in place when
    /// this returns, and survives reconnections where the broker has them.
    async fn listen(&self, node: &str) -> Result<ControlInbox, BrokerError>;

    /// Delivers a node's reply to the mailbox `to` names. A mailbox that
    /// is not open (its client gave up) drops it.
    async fn reply(&self, to: &ReplyTo, reply: &ControlReply) -> Result<(), BrokerError>;

    /// Opens reply mailbox `oid`, before the request is broadcast so that
    /// no reply is missed.
    async fn open_replies(&self, oid: &str) -> Result<(), BrokerError>;

    /// Waits up to `wait` for replies in mailbox `oid`; returns those that
    /// arrived (none when the wait ran out).
    async fn next_replies(
        &self,
        oid: &str,
        wait: Duration,
    ) -> Result<Vec<ControlReply>, BrokerError>;

    /// Closes mailbox `oid`; replies not taken are dropped.
    async fn close_replies(&self, oid: &str) -> Result<(), BrokerError>;

    /// Deletes every message waiting on `queue` (delayed ones included, not
    /// those held by a worker); returns how many were deleted.
    async fn purge(&self, queue: &str) -> Result<usize, BrokerError>;

    /// The node names bound to the remote-control fanout now, where the
    /// broker records them (kombu binds `<node>.celery.pidbox` on Redis,
    /// Python workers included), so that a worker's `hello` at startup
    /// knows whom to wait for. By default
    /// [`BrokerError::Unsupported`]: the brokers only celeriac workers use
    /// know their nodes from [`Nodes`](super::Nodes).
    async fn listeners(&self) -> Result<Vec<String>, BrokerError> {
        Err(BrokerError::Unsupported(
            "this broker does not record remote-control listeners".into(),
        ))
    }

    /// The messages of `queues` waiting for their eta in the broker
    /// (delayed), soonest first, at most `limit`: what a worker reports as
    /// `inspect scheduled`. Each is `(eta as unix time, queue, envelope)`.
    ///
    /// celeriac workers never hold an eta message in memory (the broker
    /// keeps it until due), so these are the queues' delayed messages, the
    /// same for every worker consuming them. By default
    /// [`BrokerError::Unsupported`].
    async fn delayed(
        &self,
        queues: &[String],
        limit: usize,
    ) -> Result<Vec<(f64, String, Vec<u8>)>, BrokerError> {
        let _ = (queues, limit);
        Err(BrokerError::Unsupported(
            "this broker does not list its delayed messages".into(),
        ))
    }

    /// Broadcasts `request` with a fresh reply mailbox and collects the
    /// replies, as kombu's `Mailbox._broadcast(reply=True)`: until `limit`
    /// replies came (by default one per `destination` node, if it names
    /// any), or until no reply came for `timeout`. Replies to other
    /// tickets are ignored. Returns `{node: value}` maps in arrival order.
    async fn call(
        &self,
        mut request: ControlRequest,
        timeout: Duration,
        limit: Option<usize>,
    ) -> Result<Vec<Map<String, Value>>, BrokerError> {
        let oid = uuid::Uuid::new_v4().to_string();
        let ticket = uuid::Uuid::new_v4().to_string();
        request.ticket = Some(ticket.clone());
        request.reply_to = Some(ReplyTo {
            exchange: REPLY_EXCHANGE.to_string(),
            routing_key: oid.clone(),
        });
        if request.expires == 0.0 {
            request.expires = crate::time::unix_now() + timeout.as_secs_f64();
        }
        let limit = limit.or_else(|| {
            request
                .destination
                .as_ref()
                .filter(|d| !d.is_empty())
                .map(Vec::len)
        });
        self.open_replies(&oid).await?;
        let collected = async {
            self.broadcast(&request).await?;
            let mut out = Vec::new();
            let mut idle_since = Instant::now();
            while limit.is_none_or(|l| out.len() < l) {
                let left = timeout.saturating_sub(idle_since.elapsed());
                if left.is_zero() {
                    break;
                }
                let got = self.next_replies(&oid, left).await?;
                for r in got {
                    if r.ticket == ticket && limit.is_none_or(|l| out.len() < l) {
                        out.push(r.body);
                        idle_since = Instant::now();
                    }
                }
            }
            Ok::<_, BrokerError>(out)
        }
        .await;
        let closed = self.close_replies(&oid).await;
        let out = collected?;
        closed?;
        Ok(out)
    }
}

/// Python's `fnmatch.fnmatchcase`: `*`, `?`, `[seq]` and `[!seq]`, over
/// the whole name.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    glob_at(&p, &n)
}

fn glob_at(p: &[char], n: &[char]) -> bool {
    match p.first() {
        None => n.is_empty(),
        Some('*') => (0..=n.len()).any(|i| glob_at(&p[1..], &n[i..])),
        Some('?') => !n.is_empty() && glob_at(&p[1..], &n[1..]),
        Some('[') => match (class_end(p), n.first()) {
            (Some(end), Some(c)) => in_class(&p[1..end], *c) && glob_at(&p[end + 1..], &n[1..]),
            (Some(_), None) => false,
            // An unclosed `[` is a literal, as in fnmatch.
            (None, Some('[')) => glob_at(&p[1..], &n[1..]),
            (None, _) => false,
        },
        Some(c) => n.first() == Some(c) && glob_at(&p[1..], &n[1..]),
    }
}

/// The index of the `]` closing the class that opens at `p[0]`.
fn class_end(p: &[char]) -> Option<usize> {
    let mut i = 1;
    if p.get(i) == Some(&'!') {
        i += 1;
    }
    // A `]` right after `[` or `[!` is a member.
    if p.get(i) == Some(&']') {
        i += 1;
    }
    p[i..].iter().position(|c| *c == ']').map(|j| i + j)
}

fn in_class(class: &[char], c: char) -> bool {
    let (negated, class) = match class.first() {
        Some('!') => (true, &class[1..]),
        _ => (false, class),
    };
    let mut found = false;
    let mut i = 0;
    while i < class.len() {
        if i + 2 < class.len() && class[i + 1] == '-' {
            if class[i] <= c && c <= class[i + 2] {
                found = true;
            }
            i += 3;
        } else {
            if class[i] == c {
                found = true;
            }
            i += 1;
        }
    }
    found != negated
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_is_fnmatch() {
        assert!(glob_match("w*@host", "w1@host"));
        assert!(glob_match("*", ""));
        assert!(glob_match("w?@h", "w1@h"));
        assert!(!glob_match("w?@h", "w12@h"));
        assert!(glob_match("w[0-9]@h", "w7@h"));
        assert!(!glob_match("w[!0-9]@h", "w7@h"));
        assert!(glob_match("w[!0-9]@h", "wx@h"));
        assert!(glob_match("a[]]b", "a]b"));
        assert!(glob_match("a[b", "a[b"));
        assert!(!glob_match("celery@*", "celeriac@x"));
    }

    #[test]
    fn destination_wins_then_pattern_then_everyone() {
        let r = ControlRequest::new("ping");
        assert!(r.matches("anyone"));
        let r = ControlRequest::new("ping").to_nodes(Vec::<String>::new());
        assert!(r.matches("anyone"), "an empty destination is everyone");
        let r = ControlRequest::new("ping")
            .to_nodes(["a@h"])
            .matching("*", "glob");
        assert!(!r.matches("b@h"), "a destination is checked first");
        let r = ControlRequest::new("ping").matching("w[12]@.*", "pcre");
        assert!(r.matches("w1@host") && !r.matches("w3@host"));
        assert!(r.matches("w2@host-extra"), "pcre matches at the start");
        let r = ControlRequest::new("ping").matching("w1", "nope");
        assert!(!r.matches("w1"));
        let mut r = ControlRequest::new("ping");
        r.pattern = Some("x*".into());
        assert!(r.matches("y"), "a pattern without a matcher is ignored");
    }

    #[test]
    fn the_body_is_kombus_in_its_order() {
        let r = ControlRequest::new("rate_limit")
            .arg("task_name", "tasks.add")
            .arg("rate_limit", "10/m");
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"method":"rate_limit","arguments":{"rate_limit":"10/m","task_name":"tasks.add"},"destination":null,"pattern":null,"matcher":null}"#
        );
        let back: ControlRequest = serde_json::from_str(
            r#"{"method": "ping", "arguments": {}, "destination": ["a"], "pattern": null, "matcher": null, "ticket": "t", "reply_to": {"exchange": "reply.celery.pidbox", "routing_key": "o"}}"#,
        )
        .unwrap();
        assert_eq!(back.reply_to.unwrap().routing_key, "o");
        assert_eq!(back.ticket.as_deref(), Some("t"));
    }
}
