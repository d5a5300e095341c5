//! `celeriac events`: follow Celery's monitoring events, from celeriac and
//! Python Celery workers alike (same wire), as `celery events` does: a
//! live terminal view, or `--dump` to print them line by line.

mod view;

use std::io::Write as _;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, Result};
use celeriac::escape::{Escaped, EscapedLines};
use celeriac::events::{self, Event};
use celeriac::time::unix_now;
use clap::Args as ClapArgs;
use futures::StreamExt;
use serde_json::Value;

use crate::Conn;
use crate::parse::parse_seconds;
use celeriac::monitor::{self, Monitor};

/// `celeriac events` options.
#[derive(Debug, ClapArgs)]
pub(crate) struct EventsArgs {
    /// Print the events line by line, as `celery events --dump`, instead of
    /// the live view.
    #[arg(long, short = 'd')]
    dump: bool,
    /// With --dump: one JSON object per event, as received (with
    /// `local_received` added, as Celery's receiver adds it).
    #[arg(long, requires = "dump")]
    json: bool,
    /// Stop after this many events.
    #[arg(long)]
    limit: Option<u64>,
    /// Stop after this many seconds.
    #[arg(long, value_parser = parse_seconds)]
    timeout: Option<f64>,
}

/// Runs `celeriac events`.
pub(crate) fn run(conn: &Conn, args: EventsArgs) -> Result<ExitCode> {
    let rt = crate::runtime()?;
    rt.block_on(async {
        let url = conn.broker_url();
        let broker =
            celeriac::open_broker(&url).with_context(|| format!("opening broker {url}"))?;
        let stream = broker
            .subscribe_events()
            .await
            .context("subscribing to events")?;
        // As Celery's receiver (wakeup=True): every worker heartbeats at
        // once instead of at its next interval.
        let wakeup = celeriac::ControlRequest::new("heartbeat");
        if let Err(e) = broker.broadcast(&wakeup).await {
            tracing::warn!(error = %e, "could not ask the workers for a heartbeat");
        }
        let title = broker.url();
        if args.dump {
            dump(stream, &args, &title).await
        } else {
            live(stream, &args, title).await
        }
    })
}

/// What ends the capture: `--limit` events, `--timeout`, or Ctrl-C.
struct Stop {
    left: Option<u64>,
    deadline: Option<tokio::time::Instant>,
}

impl Stop {
    fn new(args: &EventsArgs) -> Self {
        Stop {
            left: args.limit,
            deadline: args
                .timeout
                .map(|t| tokio::time::Instant::now() + Duration::from_secs_f64(t)),
        }
    }

    /// Counts one event; true when it was the last one wanted.
    fn one(&mut self) -> bool {
        match &mut self.left {
            Some(n) => {
                *n = n.saturating_sub(1);
                *n == 0
            }
            None => false,
        }
    }

    async fn reached(&self) {
        match self.deadline {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    }
}

/// The events of each message from the stream, as a monitor takes them
/// ([`monitor::received`]). `None` when the stream ended.
async fn next_events(stream: &mut celeriac::EventStream) -> Option<Vec<Event>> {
    loop {
        let msg = match stream.next().await? {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "event subscription");
                continue;
            }
        };
        match monitor::received(&msg.body, unix_now()) {
            Ok(evs) => return Some(evs),
            Err(e) => {
                tracing::warn!(routing_key = %Escaped(&msg.routing_key), error = %Escaped(&e), "ignoring a malformed event message");
            }
        }
    }
}

async fn dump(
    mut stream: celeriac::EventStream,
    args: &EventsArgs,
    title: &str,
) -> Result<ExitCode> {
    let mut stop = Stop::new(args);
    let mut names = Names::default();
    let mut out = std::io::stdout().lock();
    // The capture is on from here: a test or a script can wait for it.
    if writeln!(
        out,
        "-> celeriac events: capturing events on {}",
        Escaped(title)
    )
    .and_then(|()| out.flush())
    .is_err()
    {
        return Ok(ExitCode::SUCCESS);
    }
    loop {
        let evs = tokio::select! {
            e = next_events(&mut stream) => e,
            () = stop.reached() => return Ok(ExitCode::SUCCESS),
            _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
        };
        let Some(evs) = evs else {
            anyhow::bail!("the event subscription ended");
        };
        for ev in evs {
            let line = if args.json {
                serde_json::to_string(&ev).unwrap_or_default()
            } else {
                dump_line(ev, &mut names)
            };
            // A closed pipe (`| head`) ends the capture quietly.
            if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
                return Ok(ExitCode::SUCCESS);
            }
            if stop.one() {
                return Ok(ExitCode::SUCCESS);
            }
        }
    }
}

/// Task names by id, from `task-received` and `task-sent`, for the lines
/// of later events (Celery's dumper keeps 4095).
#[derive(Debug, Default)]
struct Names {
    by_id: std::collections::HashMap<String, String>,
    order: std::collections::VecDeque<String>,
}

impl Names {
    const MAX: usize = 0xFFF;

    fn remember(&mut self, id: &str, text: String) {
        if self.by_id.insert(id.to_string(), text).is_none() {
            self.order.push_back(id.to_string());
            if self.order.len() > Self::MAX
                && let Some(old) = self.order.pop_front()
            {
                self.by_id.remove(&old);
            }
        }
    }
}

/// Python's `str()` of an event field.
fn py_str(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => celeriac::message::value_repr(other),
    }
}

/// One line as `celery events --dump` prints it:
/// `w1@host [2026-11-29 10:00:00.123456+00:00] heartbeat: active=0, clock=3, ...`.
fn dump_line(mut ev: Event, names: &mut Names) -> String {
    let ts = ev
        .remove("timestamp")
        .and_then(|v| v.as_f64())
        .unwrap_or(0.0);
    let when = celeriac::time::try_iso_from_unix(ts)
        .unwrap_or_default()
        .replacen('T', " ", 1);
    let kind = ev
        .remove("type")
        .map(|v| py_str(&v))
        .unwrap_or_default()
        .to_lowercase();
    let hostname = ev
        .remove("hostname")
        .map(|v| py_str(&v))
        .unwrap_or_default();
    let human = match kind.as_str() {
        "worker-offline" => "shutdown".to_string(),
        "worker-online" => "started".to_string(),
        "worker-heartbeat" => "heartbeat".to_string(),
        other => other.replace('-', " "),
    };
    let mut task = None;
    if kind.starts_with("task-") {
        let id = ev.remove("uuid").map(|v| py_str(&v)).unwrap_or_default();
        task = Some(if kind == "task-received" || kind == "task-sent" {
            let mut take = |k: &str| ev.remove(k).map(|v| py_str(&v)).unwrap_or_default();
            let text = format!(
                "{}({id}) args={} kwargs={}",
                take("name"),
                take("args"),
                take("kwargs")
            );
            names.remember(&id, text.clone());
            text
        } else {
            names.by_id.get(&id).cloned().unwrap_or_default()
        });
    }
    // serde_json's map is sorted by key, as Celery's dumper sorts them.
    let fields = ev
        .iter()
        .map(|(k, v)| {
            if k == "traceback" {
                format!("{k}={}", EscapedLines(py_str(v)))
            } else {
                format!("{k}={}", Escaped(py_str(v)))
            }
        })
        .collect::<Vec<_>>()
        .join(", ");
    let sep = if fields.is_empty() { "" } else { ":" };
    let head = format!("{} [{when}] {human}{sep}", Escaped(&hostname));
    match task {
        Some(task) => format!("{head} {} {fields}", Escaped(&task)),
        None => format!("{head} {fields}"),
    }
}

/// The live view, until `q`, Esc, Ctrl-C, `--limit` or `--timeout`.
async fn live(
    mut stream: celeriac::EventStream,
    args: &EventsArgs,
    title: String,
) -> Result<ExitCode> {
    let monitor = Arc::new(Mutex::new(Monitor::default()));
    let (quit_tx, mut quit_rx) = tokio::sync::oneshot::channel::<Result<()>>();
    let ui = {
        let monitor = monitor.clone();
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = done.clone();
        let thread = std::thread::Builder::new()
            .name("celeriac-events-view".into())
            .spawn(move || {
                let _ = quit_tx.send(ui_loop(&monitor, &title, &flag));
            })
            .context("starting the view")?;
        (thread, done)
    };
    let mut stop = Stop::new(args);
    let result = loop {
        tokio::select! {
            evs = next_events(&mut stream) => {
                let Some(evs) = evs else {
                    break Err(anyhow::anyhow!("the event subscription ended"));
                };
                let mut m = monitor.lock().unwrap_or_else(PoisonError::into_inner);
                let now = unix_now();
                let mut last = false;
                for ev in &evs {
                    m.apply(ev, now);
                    last |= stop.one();
                }
                if last {
                    break Ok(());
                }
            }
            r = &mut quit_rx => break r.unwrap_or(Ok(())),
            () = stop.reached() => break Ok(()),
        }
    };
    ui.1.store(true, std::sync::atomic::Ordering::SeqCst);
    let _ = ui.0.join();
    result.map(|()| ExitCode::SUCCESS)
}

/// The view's thread: draws four times a second and reads keys, until the
/// user quits or `done` is set. Restores the terminal in any case.
fn ui_loop(
    monitor: &Mutex<Monitor>,
    title: &str,
    done: &std::sync::atomic::AtomicBool,
) -> Result<()> {
    use ratatui::crossterm::event::{
        self as term, Event as TermEvent, KeyCode, KeyEventKind, KeyModifiers,
    };
    let mut terminal =
        ratatui::try_init().context("opening the terminal (use --dump without one)")?;
    let result = (|| -> Result<()> {
        while !done.load(std::sync::atomic::Ordering::SeqCst) {
            terminal.draw(|f| {
                view::draw(
                    f,
                    &mut monitor.lock().unwrap_or_else(PoisonError::into_inner),
                    title,
                    unix_now(),
                )
            })?;
            if term::poll(Duration::from_millis(250))?
                && let TermEvent::Key(k) = term::read()?
                && k.kind == KeyEventKind::Press
            {
                let ctrl_c =
                    k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL);
                if ctrl_c || matches!(k.code, KeyCode::Char('q') | KeyCode::Esc) {
                    return Ok(());
                }
            }
        }
        Ok(())
    })();
    ratatui::restore();
    result
}

/// Sends Celery's `task-sent` event for each of `msgs`, just published
/// (`call --sent-event`, `map --sent-event`). Events are for monitoring:
/// one the broker refuses is logged, and the tasks go on.
pub(crate) async fn send_sent(
    broker: &std::sync::Arc<dyn celeriac::Broker>,
    msgs: &[celeriac::Message],
) {
    // This process's Lamport clock for the events it sends.
    static CLOCK: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let now = unix_now();
    let sent: Vec<_> = msgs
        .iter()
        .map(|m| {
            let clock = CLOCK.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            events::task_sent(m, clock, now)
        })
        .collect();
    if let Err(e) = broker.send_events(&sent).await {
        tracing::warn!(error = %e, "could not send the task-sent events");
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn ev(v: Value) -> Event {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn dump_lines_are_celerys() {
        let mut names = Names::default();
        let hb = ev(
            json!({"hostname": "w1@h", "utcoffset": 0.0, "pid": 7, "clock": 3, "freq": 2.0, "active": 0, "processed": 1,
            "loadavg": [0.5, 0.25, 0.1], "sw_ident": "py-celery", "sw_ver": "5.7.0", "sw_sys": "Linux", "timestamp": 1795897012.5,
            "type": "worker-heartbeat", "local_received": 1795897012.75}),
        );
        assert_eq!(
            dump_line(hb, &mut names),
            "w1@h [2026-11-28 20:16:52.500000+00:00] heartbeat: active=0, clock=3, freq=2.0, loadavg=[0.5, 0.25, 0.1], local_received=1795897012.75, pid=7, processed=1, sw_ident=py-celery, sw_sys=Linux, sw_ver=5.7.0, utcoffset=0.0"
        );
        let received = ev(
            json!({"hostname": "w1@h", "uuid": "id1", "name": "tasks.add", "args": "(2, 3)", "kwargs": "{}",
            "root_id": "id1", "parent_id": null, "retries": 0, "eta": null, "timestamp": 1795897012.5, "type": "task-received"}),
        );
        assert_eq!(
            dump_line(received, &mut names),
            "w1@h [2026-11-28 20:16:52.500000+00:00] task received: tasks.add(id1) args=(2, 3) kwargs={} eta=None, parent_id=None, retries=0, root_id=id1"
        );
        let failed = ev(
            json!({"hostname": "w1@h", "uuid": "id1", "exception": "ValueError('x')",
            "traceback": "Traceback:\n  boom\x1b[31m", "timestamp": 1795897012.5, "type": "task-failed"}),
        );
        assert_eq!(
            dump_line(failed, &mut names),
            "w1@h [2026-11-28 20:16:52.500000+00:00] task failed: tasks.add(id1) args=(2, 3) kwargs={} exception=ValueError('x'), traceback=Traceback:\n  boom\\u{1b}[31m"
        );
        let offline = ev(json!({"hostname": "w\n2", "type": "worker-offline", "timestamp": 0.0}));
        assert!(
            dump_line(offline, &mut names)
                .starts_with(r"w\n2 [1970-01-01 00:00:00.000000+00:00] shutdown")
        );
    }
}
