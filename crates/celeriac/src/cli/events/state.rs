//! What `celeriac events` knows, built from the events alone, as Celery's
//! `celery.events.state` builds it: the workers and whether they are
//! online, each task's latest state, counts per state, and tasks per
//! second.

use std::collections::{BTreeMap, HashMap, VecDeque};

use celeriac::events::Event;
use serde_json::Value;

/// Tasks remembered; the oldest are forgotten beyond it.
const MAX_TASKS: usize = 10_000;

/// Finished tasks are counted over this many seconds for tasks per second.
const RATE_WINDOW: f64 = 5.0;

/// A task's states in the order a task goes through them; an event never
/// moves a task back from a final state.
pub(crate) const STATES: [&str; 8] = [
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
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct WorkerRow {
    pub(crate) hostname: String,
    /// Heartbeat interval in seconds (Celery's default 2).
    pub(crate) freq: f64,
    /// Local time of its last event of any kind.
    pub(crate) last_seen: f64,
    pub(crate) active: u64,
    pub(crate) processed: u64,
    pub(crate) loadavg: String,
    pub(crate) software: String,
    /// It said `worker-offline`.
    pub(crate) offline: bool,
}

impl WorkerRow {
    /// Online as Celery's monitors judge it: not gone offline, and an
    /// event within two heartbeat intervals.
    pub(crate) fn alive(&self, now: f64) -> bool {
        !self.offline && now < self.last_seen + 2.0 * self.freq
    }
}

/// A task as its events describe it.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct TaskRow {
    pub(crate) uuid: String,
    pub(crate) name: String,
    pub(crate) state: &'static str,
    pub(crate) worker: String,
    /// The sender's time of the latest event.
    pub(crate) timestamp: f64,
    pub(crate) args: String,
    pub(crate) runtime: Option<f64>,
    /// The result's repr, or the exception's.
    pub(crate) outcome: String,
    /// When it last changed (the monitor's sequence number).
    seq: u64,
}

/// The monitor's state.
#[derive(Debug, Default)]
pub(crate) struct Monitor {
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

fn text(ev: &Event, key: &str) -> String {
    match ev.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

impl Monitor {
    /// Takes one event in, received at local time `now`.
    pub(crate) fn apply(&mut self, ev: &Event, now: f64) {
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
            task.args = format!("{} {}", text(ev, "args"), text(ev, "kwargs"));
        }
        if state != "PENDING" && !hostname.is_empty() {
            task.worker = hostname.to_string();
        }
        task.timestamp = ev.get("timestamp").and_then(Value::as_f64).unwrap_or(now);
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
        if self.recent.len() > 4 * MAX_TASKS {
            let tasks = &self.tasks;
            self.recent
                .retain(|(seq, id)| tasks.get(id).is_some_and(|t| t.seq == *seq));
        }
    }

    fn forget_oldest(&mut self) {
        while self.tasks.len() >= MAX_TASKS {
            let Some((seq, old)) = self.recent.pop_front() else {
                break;
            };
            if self.tasks.get(&old).is_some_and(|t| t.seq == seq) {
                self.tasks.remove(&old);
            }
        }
    }

    /// The workers, by name.
    pub(crate) fn workers(&self) -> impl Iterator<Item = &WorkerRow> {
        self.workers.values()
    }

    /// The `n` most recently changed tasks, newest first.
    pub(crate) fn recent(&self, n: usize) -> Vec<&TaskRow> {
        self.recent
            .iter()
            .rev()
            .filter_map(|(seq, id)| self.tasks.get(id).filter(|t| t.seq == *seq))
            .take(n)
            .collect()
    }

    /// How many tasks are in `state` now.
    pub(crate) fn count(&self, state: &str) -> u64 {
        self.counts.get(state).copied().unwrap_or(0)
    }

    /// Tasks finished (succeeded or failed) per second over the last few
    /// seconds before `now`.
    pub(crate) fn rate(&mut self, now: f64) -> f64 {
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
    pub(crate) fn events(&self) -> u64 {
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
        assert_eq!(recent[1].args, "(2, 3) {}");
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
        for i in 0..MAX_TASKS + 5 {
            m.apply(
                &ev(json!({"type": "task-received", "hostname": "w", "uuid": i.to_string()})),
                2.0,
            );
        }
        assert_eq!(m.tasks.len(), MAX_TASKS);
        assert!(!m.tasks.contains_key("r") && !m.tasks.contains_key("0"));
        assert_eq!(m.recent(1)[0].uuid, (MAX_TASKS + 4).to_string());
    }
}
