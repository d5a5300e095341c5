//! What a monitor knows, built from Celery's events alone, as Celery's
//! `celery.events.state` builds it: the workers and whether they are
//! online, each task's latest state with its arguments, result or
//! traceback, retries and place in a canvas, counts per state, and tasks
//! per second. `celeriac events` and `celeriac dashboard` both draw from
//! it; neither does IO here.
//!
//! Memory is bounded: at most [`Monitor::max_tasks`] tasks are remembered,
//! and the least recently changed are forgotten first.
//!
//! # Examples
//!
//! ```
//! use celeriac_core::monitor::Monitor;
//! use serde_json::json;
//!
//! let mut m = Monitor::new(100);
//! let ev = json!({"type": "task-failed", "hostname": "w1@h", "uuid": "id-1",
//!                 "exception": "ValueError('x')", "traceback": "Traceback ..."});
//! m.apply(ev.as_object().unwrap(), 1795897012.0);
//! assert_eq!(m.count("FAILURE"), 1);
//! assert_eq!(m.task("id-1").unwrap().traceback, "Traceback ...");
//! assert_eq!(m.workers().next().unwrap().hostname, "w1@h");
//! ```

use std::collections::{BTreeMap, HashMap, VecDeque};

use serde::Serialize;
use serde_json::Value;

use crate::CodecError;
use crate::events::{self, Event};

/// Tasks remembered by [`Monitor::default`]; the oldest are forgotten
/// beyond it.
pub const DEFAULT_MAX_TASKS: usize = 10_000;

/// Finished tasks are counted over this many seconds for tasks per second.
const RATE_WINDOW: f64 = 5.0;

/// A task's states in the order a task goes through them; an event never
/// moves a task back from a final state.
pub const STATES: [&str; 8] = [
    "PENDING", "RECEIVED", "STARTED", "RETRY", "SUCCESS", "FAILURE", "REVOKED", "REJECTED",
];

fn state_of(kind: &str) -> Option<&'static str> {
    Some(match kind {
        "task-sent" => "PENDING",
        "task-received" => "RECEIVED",
        "task-started" => "STARTED",
        "task-retried" => "RETRY",
        "task-succeeded" => "SUCCESS",
        "task-failed" => "FAILURE",
        "task-revoked" => "REVOKED",
        "task-rejected" => "REJECTED",
        _ => return None,
    })
}

fn is_final(state: &str) -> bool {
    matches!(state, "SUCCESS" | "FAILURE" | "REVOKED" | "REJECTED")
}

/// A worker as its events describe it.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[non_exhaustive]
pub struct WorkerRow {
    /// Its node name (`celery@host`).
    pub hostname: String,
    /// Heartbeat interval in seconds (Celery's default 2).
    pub freq: f64,
    /// Local time of its last event of any kind.
    pub last_seen: f64,
    /// Tasks running, as its last heartbeat said.
    pub active: u64,
    /// Tasks it has run, as its last heartbeat said.
    pub processed: u64,
    /// Its load averages over 1, 5 and 15 minutes, as text (`0.50 0.25 0.10`).
    pub loadavg: String,
    /// `sw_ident sw_ver` (`py-celery 5.7.0`, `celeriac 0.1.0`).
    pub software: String,
    /// Its process id.
    pub pid: u64,
    /// It said `worker-offline`.
    pub offline: bool,
}

impl WorkerRow {
    /// Online as Celery's monitors judge it: not gone offline, and an
    /// event within two heartbeat intervals.
    pub fn alive(&self, now: f64) -> bool {
        !self.offline && now < self.last_seen + 2.0 * self.freq
    }
}

/// A task as its events describe it.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[non_exhaustive]
pub struct TaskRow {
    /// Its id.
    pub uuid: String,
    /// Its name (`tasks.add`), from `task-received` or `task-sent`.
    pub name: String,
    /// Its latest state, one of [`STATES`].
    pub state: &'static str,
    /// The worker that last reported on it.
    pub worker: String,
    /// The sender's time of the latest event.
    pub timestamp: f64,
    /// The positional arguments' repr, as the event carries it (`(2, 3)`).
    pub args: String,
    /// The keyword arguments' repr (`{}`).
    pub kwargs: String,
    /// Seconds it ran, from `task-succeeded` or `task-failed`.
    pub runtime: Option<f64>,
    /// The result's repr, or the exception's.
    pub outcome: String,
    /// The traceback of its failure or retry.
    pub traceback: String,
    /// How many times it was retried.
    pub retries: u64,
    /// The task that called it, in a canvas or as a subtask.
    pub parent_id: Option<String>,
    /// The first task of its workflow.
    pub root_id: Option<String>,
    /// The sender's time it was received by a worker.
    pub received: Option<f64>,
    /// The sender's time it started.
    pub started: Option<f64>,
    /// When it last changed (the monitor's sequence number).
    #[serde(skip)]
    seq: u64,
}

/// The monitor's state: feed it every event with [`apply`](Self::apply).
#[derive(Debug)]
pub struct Monitor {
    max_tasks: usize,
    workers: BTreeMap<String, WorkerRow>,
    tasks: HashMap<String, TaskRow>,
    /// Task ids with their sequence number when they changed, least
    /// recently changed first; an entry whose number is not the task's is
    /// stale (it changed again since).
    recent: VecDeque<(u64, String)>,
    seq: u64,
    /// Tasks in each state (a forgotten task stays counted).
    counts: HashMap<&'static str, u64>,
    /// Local times of the latest finished tasks.
    finished: VecDeque<f64>,
    events: u64,
}

impl Default for Monitor {
    fn default() -> Self {
        Monitor::new(DEFAULT_MAX_TASKS)
    }
}

fn text(ev: &Event, key: &str) -> String {
    match ev.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

/// The events of one message from the `celeryev` exchange, as Celery's
/// receiver hands them to its state: `local_received` set to `now`, and
/// each sender's timestamp moved into this host's time zone.
pub fn received(body: &[u8], now: f64) -> Result<Vec<Event>, CodecError> {
    let mut evs = events::decode(body)?;
    let here = events::utcoffset();
    for ev in &mut evs {
        localize(ev, here);
        ev.insert("local_received".into(), now.into());
    }
    Ok(evs)
}

/// Celery's `adjust_timestamp`: a sender's timestamp in this host's time
/// zone (`here`, hours west of UTC).
fn localize(ev: &mut Event, here: f64) {
    let offset = ev.get("utcoffset").and_then(Value::as_f64);
    if let (Some(ts), Some(offset)) = (ev.get("timestamp").and_then(Value::as_f64), offset) {
        ev.insert("timestamp".into(), (ts - (offset - here) * 3600.0).into());
    }
}

fn opt_text(ev: &Event, key: &str) -> Option<String> {
    Some(text(ev, key)).filter(|s| !s.is_empty())
}

impl Monitor {
    /// A monitor that remembers at most `max_tasks` tasks (at least one).
    pub fn new(max_tasks: usize) -> Self {
        Monitor {
            max_tasks: max_tasks.max(1),
            workers: BTreeMap::new(),
            tasks: HashMap::new(),
            recent: VecDeque::new(),
            seq: 0,
            counts: HashMap::new(),
            finished: VecDeque::new(),
            events: 0,
        }
    }

    /// How many tasks it remembers at most.
    pub fn max_tasks(&self) -> usize {
        self.max_tasks
    }

    /// Takes one event in, received at local time `now`.
    pub fn apply(&mut self, ev: &Event, now: f64) {
        self.events += 1;
        let kind = ev.get("type").and_then(Value::as_str).unwrap_or_default();
        let hostname = text(ev, "hostname");
        if !hostname.is_empty() && kind != "task-sent" {
            self.worker_event(&hostname, kind, ev, now);
        }
        if let Some(state) = state_of(kind) {
            self.task_event(state, &hostname, ev, now);
        }
    }

    fn worker_event(&mut self, hostname: &str, kind: &str, ev: &Event, now: f64) {
        let w = self
            .workers
            .entry(hostname.to_string())
            .or_insert_with(|| WorkerRow {
                hostname: hostname.to_string(),
                freq: 2.0,
                ..WorkerRow::default()
            });
        // Any event from a worker shows it alive (Celery's state does the
        // same).
        w.last_seen = now;
        if !kind.starts_with("worker-") {
            w.offline = false;
            return;
        }
        w.offline = kind == "worker-offline";
        if let Some(f) = ev.get("freq").and_then(Value::as_f64).filter(|f| *f > 0.0) {
            w.freq = f;
        }
        w.active = ev.get("active").and_then(Value::as_u64).unwrap_or(w.active);
        w.processed = ev
            .get("processed")
            .and_then(Value::as_u64)
            .unwrap_or(w.processed);
        if let Some(Value::Array(l)) = ev.get("loadavg") {
            w.loadavg = l
                .iter()
                .map(|v| v.as_f64().map_or_else(String::new, |f| format!("{f:.2}")))
                .collect::<Vec<_>>()
                .join(" ");
        }
        w.pid = ev.get("pid").and_then(Value::as_u64).unwrap_or(w.pid);
        let ident = text(ev, "sw_ident");
        if !ident.is_empty() {
            w.software = format!("{ident} {}", text(ev, "sw_ver"));
        }
    }

    fn task_event(&mut self, state: &'static str, hostname: &str, ev: &Event, now: f64) {
        let uuid = text(ev, "uuid");
        if uuid.is_empty() {
            return;
        }
        if matches!(state, "SUCCESS" | "FAILURE") {
            self.finished.push_back(now);
        }
        if !self.tasks.contains_key(&uuid) {
            self.forget_oldest();
        }
        let task = self.tasks.entry(uuid.clone()).or_insert_with(|| TaskRow {
            uuid: uuid.clone(),
            ..TaskRow::default()
        });
        let before = task.state;
        // Events of one task can arrive out of order (from two workers, or
        // a late batch): a finished task stays finished, except that a
        // retried one is received again.
        let moves = before.is_empty() || !is_final(before);
        if moves {
            task.state = state;
        }
        let name = text(ev, "name");
        if !name.is_empty() {
            task.name = name;
        }
        if state == "RECEIVED" || state == "PENDING" {
            task.args = text(ev, "args");
            task.kwargs = text(ev, "kwargs");
            if let Some(p) = opt_text(ev, "parent_id") {
                task.parent_id = Some(p);
            }
            if let Some(r) = opt_text(ev, "root_id") {
                task.root_id = Some(r);
            }
        }
        if let Some(r) = ev.get("retries").and_then(Value::as_u64) {
            task.retries = task.retries.max(r);
        }
        let at = ev.get("timestamp").and_then(Value::as_f64).unwrap_or(now);
        match state {
            "RECEIVED" => task.received = Some(at),
            "STARTED" => task.started = Some(at),
            "RETRY" => task.retries += 1,
            _ => {}
        }
        if matches!(state, "FAILURE" | "RETRY") {
            let tb = text(ev, "traceback");
            if !tb.is_empty() {
                task.traceback = tb;
            }
        }
        if state != "PENDING" && !hostname.is_empty() {
            task.worker = hostname.to_string();
        }
        task.timestamp = at;
        if let Some(r) = ev.get("runtime").and_then(Value::as_f64) {
            task.runtime = Some(r);
        }
        match state {
            "SUCCESS" => task.outcome = text(ev, "result"),
            "FAILURE" | "RETRY" => task.outcome = text(ev, "exception"),
            "REVOKED" if ev.get("expired") == Some(&Value::Bool(true)) => {
                task.outcome = "expired".into()
            }
            "REVOKED" if ev.get("terminated") == Some(&Value::Bool(true)) => {
                task.outcome = "terminated".into()
            }
            _ => {}
        }
        let after = task.state;
        if after != before {
            if !before.is_empty()
                && let Some(c) = self.counts.get_mut(before)
            {
                *c = c.saturating_sub(1);
            }
            *self.counts.entry(after).or_default() += 1;
        }
        self.seq += 1;
        task.seq = self.seq;
        self.recent.push_back((self.seq, uuid));
        if self.recent.len() > 4 * self.max_tasks {
            let tasks = &self.tasks;
            self.recent
                .retain(|(seq, id)| tasks.get(id).is_some_and(|t| t.seq == *seq));
        }
    }

    fn forget_oldest(&mut self) {
        while self.tasks.len() >= self.max_tasks {
            let Some((seq, old)) = self.recent.pop_front() else {
                break;
            };
            if self.tasks.get(&old).is_some_and(|t| t.seq == seq) {
                self.tasks.remove(&old);
            }
        }
    }

    /// The workers, by name.
    pub fn workers(&self) -> impl Iterator<Item = &WorkerRow> {
        self.workers.values()
    }

    /// A worker by node name.
    pub fn worker(&self, hostname: &str) -> Option<&WorkerRow> {
        self.workers.get(hostname)
    }

    /// A remembered task by id.
    pub fn task(&self, uuid: &str) -> Option<&TaskRow> {
        self.tasks.get(uuid)
    }

    /// The remembered tasks whose parent is `uuid` (a canvas's or a
    /// subtask's children), oldest first.
    pub fn children(&self, uuid: &str) -> Vec<&TaskRow> {
        let mut out: Vec<&TaskRow> = self
            .tasks
            .values()
            .filter(|t| t.parent_id.as_deref() == Some(uuid))
            .collect();
        out.sort_by(|a, b| {
            a.received
                .partial_cmp(&b.received)
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        out
    }

    /// How many tasks are remembered now.
    pub fn remembered(&self) -> usize {
        self.tasks.len()
    }

    /// The `n` most recently changed tasks, newest first.
    pub fn recent(&self, n: usize) -> Vec<&TaskRow> {
        self.recent
            .iter()
            .rev()
            .filter_map(|(seq, id)| self.tasks.get(id).filter(|t| t.seq == *seq))
            .take(n)
            .collect()
    }

    /// How many tasks are in `state` now.
    pub fn count(&self, state: &str) -> u64 {
        self.counts.get(state).copied().unwrap_or(0)
    }

    /// Tasks finished (succeeded or failed) per second over the last few
    /// seconds before `now`.
    pub fn rate(&mut self, now: f64) -> f64 {
        while self
            .finished
            .front()
            .is_some_and(|t| *t < now - RATE_WINDOW)
        {
            self.finished.pop_front();
        }
        self.finished.len() as f64 / RATE_WINDOW
    }

    /// Events taken in.
    pub fn events(&self) -> u64 {
        self.events
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn ev(v: Value) -> Event {
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    #[test]
    fn tasks_move_through_their_states_and_are_counted() {
        let mut m = Monitor::default();
        let w = "w1@h";
        m.apply(&ev(json!({"type": "worker-online", "hostname": w, "freq": 2.0, "active": 0, "processed": 0, "loadavg": [0.5, 0.25, 0.1], "sw_ident": "py-celery", "sw_ver": "5.7.0"})), 100.0);
        m.apply(&ev(json!({"type": "task-received", "hostname": w, "uuid": "a", "name": "tasks.add", "args": "(2, 3)", "kwargs": "{}", "timestamp": 100.0})), 100.0);
        m.apply(&ev(json!({"type": "task-received", "hostname": w, "uuid": "b", "name": "tasks.boom", "args": "()", "kwargs": "{}"})), 100.0);
        assert_eq!(m.count("RECEIVED"), 2);
        m.apply(
            &ev(json!({"type": "task-started", "hostname": w, "uuid": "a"})),
            100.5,
        );
        m.apply(&ev(json!({"type": "task-succeeded", "hostname": w, "uuid": "a", "result": "5", "runtime": 0.01})), 101.0);
        m.apply(&ev(json!({"type": "task-failed", "hostname": w, "uuid": "b", "exception": "ValueError('x')"})), 101.0);
        // A late task-started does not move a finished task back.
        m.apply(
            &ev(json!({"type": "task-started", "hostname": w, "uuid": "b"})),
            101.0,
        );
        assert_eq!(
            STATES.map(|s| m.count(s)),
            [0, 0, 0, 0, 1, 1, 0, 0],
            "one SUCCESS, one FAILURE"
        );
        let recent = m.recent(10);
        assert_eq!(recent[0].uuid, "b");
        assert_eq!(recent[1].name, "tasks.add");
        assert_eq!(
            (recent[1].args.as_str(), recent[1].kwargs.as_str()),
            ("(2, 3)", "{}")
        );
        assert_eq!(recent[1].outcome, "5");
        assert_eq!(recent[1].runtime, Some(0.01));
        assert_eq!(recent[1].worker, w);
        assert_eq!(m.rate(102.0), 2.0 / RATE_WINDOW);
        assert_eq!(m.rate(200.0), 0.0);
        assert_eq!(m.events(), 7);
        let worker = m.workers().next().unwrap();
        assert_eq!(worker.software, "py-celery 5.7.0");
        assert_eq!(worker.loadavg, "0.50 0.25 0.10");
    }

    #[test]
    fn workers_are_online_while_they_send_anything_and_offline_when_they_say_so() {
        let mut m = Monitor::default();
        m.apply(
            &ev(json!({"type": "worker-heartbeat", "hostname": "w", "freq": 1.0, "processed": 7})),
            10.0,
        );
        let w = m.workers().next().unwrap().clone();
        assert!(w.alive(11.9) && !w.alive(12.1));
        assert_eq!(w.processed, 7);
        m.apply(
            &ev(json!({"type": "task-started", "hostname": "w", "uuid": "x"})),
            20.0,
        );
        assert!(
            m.workers().next().unwrap().alive(21.0),
            "a task event is a sign of life"
        );
        m.apply(
            &ev(json!({"type": "worker-offline", "hostname": "w"})),
            21.0,
        );
        assert!(!m.workers().next().unwrap().alive(21.0));
    }

    #[test]
    fn a_retried_task_is_received_again_and_the_oldest_tasks_are_forgotten() {
        let mut m = Monitor::default();
        m.apply(&ev(json!({"type": "task-retried", "hostname": "w", "uuid": "r", "exception": "Retry()"})), 1.0);
        m.apply(
            &ev(json!({"type": "task-received", "hostname": "w", "uuid": "r", "name": "t"})),
            1.0,
        );
        assert_eq!((m.count("RETRY"), m.count("RECEIVED")), (0, 1));
        for i in 0..DEFAULT_MAX_TASKS + 5 {
            m.apply(
                &ev(json!({"type": "task-received", "hostname": "w", "uuid": i.to_string()})),
                2.0,
            );
        }
        assert_eq!(m.tasks.len(), DEFAULT_MAX_TASKS);
        assert!(!m.tasks.contains_key("r") && !m.tasks.contains_key("0"));
        assert_eq!(m.recent(1)[0].uuid, (DEFAULT_MAX_TASKS + 4).to_string());
    }

    #[test]
    fn a_task_keeps_its_traceback_retries_and_place_in_a_canvas() {
        let mut m = Monitor::new(3);
        m.apply(&ev(json!({"type": "task-received", "hostname": "w", "uuid": "p", "name": "t.parent", "args": "()", "kwargs": "{}", "timestamp": 1.0})), 1.0);
        m.apply(&ev(json!({"type": "task-received", "hostname": "w", "uuid": "c", "name": "t.child", "args": "(1,)", "kwargs": "{'k': 2}", "parent_id": "p", "root_id": "p", "retries": 0, "timestamp": 2.0})), 2.0);
        m.apply(
            &ev(json!({"type": "task-started", "hostname": "w", "uuid": "c", "timestamp": 2.5})),
            2.5,
        );
        m.apply(&ev(json!({"type": "task-retried", "hostname": "w", "uuid": "c", "exception": "Retry()", "traceback": "tb one"})), 3.0);
        m.apply(&ev(json!({"type": "task-received", "hostname": "w", "uuid": "c", "name": "t.child", "args": "(1,)", "kwargs": "{'k': 2}", "parent_id": "p", "root_id": "p", "retries": 1, "timestamp": 3.0})), 3.0);
        m.apply(&ev(json!({"type": "task-failed", "hostname": "w", "uuid": "c", "exception": "ValueError('x')", "traceback": "Traceback (most recent call last):\nValueError: x", "runtime": 0.5})), 4.0);
        let c = m.task("c").unwrap();
        assert_eq!(c.state, "FAILURE");
        assert_eq!(c.retries, 1);
        assert_eq!(
            c.traceback,
            "Traceback (most recent call last):\nValueError: x"
        );
        assert_eq!(c.kwargs, "{'k': 2}");
        assert_eq!(
            (c.parent_id.as_deref(), c.root_id.as_deref()),
            (Some("p"), Some("p"))
        );
        assert_eq!((c.received, c.started), (Some(3.0), Some(2.5)));
        assert_eq!(
            m.children("p")
                .iter()
                .map(|t| t.uuid.as_str())
                .collect::<Vec<_>>(),
            ["c"]
        );
        assert!(m.children("c").is_empty());
        // A monitor of three tasks forgets the least recently changed.
        for id in ["x", "y"] {
            m.apply(
                &ev(json!({"type": "task-received", "hostname": "w", "uuid": id})),
                5.0,
            );
        }
        assert_eq!((m.remembered(), m.max_tasks()), (3, 3));
        assert!(m.task("p").is_none() && m.task("c").is_some());
    }

    #[test]
    fn timestamps_are_moved_to_local_time() {
        let mut e = ev(json!({"timestamp": 1000.0, "utcoffset": -1.0}));
        localize(&mut e, 0.0);
        assert_eq!(e["timestamp"], 4600.0);
        let mut e = ev(json!({"timestamp": 1000.0}));
        localize(&mut e, 0.0);
        assert_eq!(e["timestamp"], 1000.0);
        let got = received(br#"[{"type": "task-started", "uuid": "a"}]"#, 7.0).unwrap();
        assert_eq!(got[0]["local_received"], 7.0);
        assert!(received(b"not json", 7.0).is_err());
    }
}
