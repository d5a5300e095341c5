//! The live view of `celeriac events`: workers, counts per state, tasks
//! per second and the latest tasks, drawn with ratatui.

use celeriac::escape::Escaped;
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Paragraph, Row, Table};

use celeriac::monitor::{Monitor, STATES};

/// Text from an event, safe for the terminal: control characters escaped.
fn safe(s: &str) -> String {
    Escaped(s).to_string()
}

fn state_color(state: &str) -> Color {
    match state {
        "SUCCESS" => Color::Green,
        "FAILURE" | "REJECTED" => Color::Red,
        "REVOKED" => Color::Magenta,
        "RETRY" => Color::Yellow,
        "STARTED" => Color::Cyan,
        _ => Color::Gray,
    }
}

/// Draws the whole view of `m` at local time `now`, under `title` (the
/// broker).
pub(crate) fn draw(frame: &mut Frame<'_>, m: &mut Monitor, title: &str, now: f64) {
    let workers: Vec<_> = m.workers().cloned().collect();
    let worker_rows = workers.len().clamp(1, 8) as u16;
    let [head, workers_area, states_area, tasks_area, foot] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(worker_rows + 3),
        Constraint::Length(3),
        Constraint::Min(4),
        Constraint::Length(1),
    ])
    .areas(frame.area());

    let bold = Style::default().add_modifier(Modifier::BOLD);
    let header = Line::from(vec![
        Span::styled("celeriac events", bold),
        Span::raw(format!(
            "  {}  {} events  {:.1} tasks/s",
            safe(title),
            m.events(),
            m.rate(now)
        )),
    ]);
    frame.render_widget(Paragraph::new(header), head);

    let rows = workers.iter().map(|w| {
        let (status, color) = if w.alive(now) {
            ("ONLINE", Color::Green)
        } else {
            ("OFFLINE", Color::Red)
        };
        Row::new(vec![
            safe(&w.hostname).into(),
            Line::styled(status, Style::default().fg(color)),
            w.active.to_string().into(),
            w.processed.to_string().into(),
            w.loadavg.clone().into(),
            safe(&w.software).into(),
            format!("{:.0}s ago", (now - w.last_seen).max(0.0)).into(),
        ])
    });
    let table = Table::new(
        rows,
        [
            Constraint::Fill(3),
            Constraint::Length(8),
            Constraint::Length(7),
            Constraint::Length(10),
            Constraint::Length(16),
            Constraint::Fill(2),
            Constraint::Length(10),
        ],
    )
    .header(
        Row::new([
            "Worker",
            "Status",
            "Active",
            "Processed",
            "Load",
            "Software",
            "Seen",
        ])
        .style(bold),
    )
    .block(Block::bordered().title(format!(" Workers ({}) ", workers.len())));
    frame.render_widget(table, workers_area);

    let counts: Vec<Span<'_>> = STATES
        .iter()
        .flat_map(|s| {
            [
                Span::styled(*s, Style::default().fg(state_color(s))),
                Span::raw(format!(" {}   ", m.count(s))),
            ]
        })
        .collect();
    frame.render_widget(
        Paragraph::new(Line::from(counts)).block(Block::bordered().title(" Tasks by state ")),
        states_area,
    );

    let shown = tasks_area.height.saturating_sub(3) as usize;
    let rows = m.recent(shown).into_iter().map(|t| {
        Row::new(vec![
            safe(&t.uuid).into(),
            safe(&t.name).into(),
            Line::styled(t.state, Style::default().fg(state_color(t.state))),
            safe(&t.worker).into(),
            celeriac::time::try_iso_from_unix(t.timestamp)
                .map(|s| s.get(11..23).unwrap_or_default().to_string())
                .unwrap_or_default()
                .into(),
            t.runtime
                .map(|r| format!("{r:.4}s"))
                .unwrap_or_default()
                .into(),
            safe(&if t.outcome.is_empty() {
                format!("{} {}", t.args, t.kwargs)
            } else {
                t.outcome.clone()
            })
            .into(),
        ])
    });
    let table = Table::new(
        rows,
        [
            Constraint::Length(36),
            Constraint::Fill(2),
            Constraint::Length(8),
            Constraint::Fill(2),
            Constraint::Length(12),
            Constraint::Length(9),
            Constraint::Fill(3),
        ],
    )
    .header(
        Row::new([
            "UUID", "Name", "State", "Worker", "Time", "Runtime", "Result",
        ])
        .style(bold),
    )
    .block(Block::bordered().title(" Recent tasks "));
    frame.render_widget(table, tasks_area);

    frame.render_widget(
        Paragraph::new(Line::styled(
            "q: quit",
            Style::default().fg(Color::DarkGray),
        )),
        foot,
    );
}

#[cfg(test)]
mod tests {
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;
    use serde_json::json;

    use super::*;

    #[test]
    fn the_view_shows_workers_states_and_tasks() {
        let mut m = Monitor::default();
        let events = [
            json!({"type": "worker-heartbeat", "hostname": "w1@h", "freq": 2.0, "active": 1, "processed": 3, "loadavg": [0.5, 0.2, 0.1], "sw_ident": "celeriac", "sw_ver": "0.1.0"}),
            json!({"type": "worker-offline", "hostname": "w2@h"}),
            json!({"type": "task-received", "hostname": "w1@h", "uuid": "id-ok", "name": "tasks.add", "args": "(2, 3)", "kwargs": "{}", "timestamp": 100.0}),
            json!({"type": "task-succeeded", "hostname": "w1@h", "uuid": "id-ok", "result": "5", "runtime": 0.25, "timestamp": 100.0}),
            json!({"type": "task-received", "hostname": "w1@h", "uuid": "id-evil", "name": "bad\u{1b}[31mname", "timestamp": 100.0}),
        ];
        for e in events {
            m.apply(e.as_object().unwrap(), 100.0);
        }
        let mut term = Terminal::new(TestBackend::new(140, 24)).unwrap();
        term.draw(|f| draw(f, &mut m, "redis://127.0.0.1:1/0", 100.5))
            .unwrap();
        let screen: String = term
            .backend()
            .buffer()
            .content()
            .iter()
            .map(|c| c.symbol())
            .collect::<Vec<_>>()
            .chunks(140)
            .map(|l| l.concat() + "\n")
            .collect();
        for want in [
            "celeriac events",
            "0.2 tasks/s",
            "Workers (2)",
            "w1@h",
            "ONLINE",
            "OFFLINE",
            "celeriac 0.1.0",
            "0.50 0.20 0.10",
            "SUCCESS 1",
            "RECEIVED 1",
            "id-ok",
            "tasks.add",
            "0.2500s",
            r"bad\u{1b}[31mname",
        ] {
            assert!(screen.contains(want), "{want:?} not in\n{screen}");
        }
    }
}
