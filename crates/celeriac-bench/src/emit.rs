//! Measurements: one JSON line per measurement on stdout (the peers'
//! schema: `workload, system, metric, value, unit`, then parameters), a
//! readable line on stderr as each is taken, and a summary table at the end.

use std::io::Write;
use std::sync::Mutex;

use serde_json::Value;

/// Every measurement emitted so far, for the closing summary table.
static RECORDED: Mutex<Vec<Measurement>> = Mutex::new(Vec::new());

/// One measurement, as written to stdout.
#[derive(Debug, Clone)]
pub(crate) struct Measurement {
    /// `W1` … `W4`.
    pub(crate) workload: &'static str,
    /// e.g. `celeriac-threads`, `celeriac-processes`.
    pub(crate) system: String,
    /// e.g. `throughput`, `latency_p50`, `per_task_overhead`.
    pub(crate) metric: &'static str,
    /// The number.
    pub(crate) value: f64,
    /// Its unit: `tasks/s`, `ms`, `us`, `MiB`, `s`, `x`.
    pub(crate) unit: &'static str,
    /// Every other key (n, mode, workers, samples, ...), in insertion order.
    pub(crate) params: Vec<(&'static str, Value)>,
}

impl Measurement {
    /// A measurement without parameters.
    pub(crate) fn new(
        workload: &'static str,
        system: impl Into<String>,
        metric: &'static str,
        value: f64,
        unit: &'static str,
    ) -> Self {
        Measurement {
            workload,
            system: system.into(),
            metric,
            value,
            unit,
            params: Vec::new(),
        }
    }

    /// Adds a parameter.
    pub(crate) fn param(mut self, key: &'static str, value: impl Into<Value>) -> Self {
        self.params.push((key, value.into()));
        self
    }

    /// The JSON line, keys in the peers' order (serde_json's `Map` would
    /// sort them).
    pub(crate) fn json_line(&self) -> String {
        let mut out = String::from("{");
        let mut push = |k: &str, v: &Value| {
            if out.len() > 1 {
                out.push(',');
            }
            out.push_str(&Value::String(k.to_string()).to_string());
            out.push(':');
            out.push_str(&v.to_string());
        };
        push("workload", &Value::from(self.workload));
        push("system", &Value::from(self.system.as_str()));
        push("metric", &Value::from(self.metric));
        push("value", &number(self.value));
        push("unit", &Value::from(self.unit));
        for (k, v) in &self.params {
            push(k, v);
        }
        push("loadavg_1m", &number(round(loadavg_1m(), 2)));
        out.push('}');
        out
    }

    /// The parameters shown in the readable table (bulky ones left out).
    fn shown_params(&self) -> String {
        self.params
            .iter()
            .filter(|(k, _)| !matches!(*k, "samples" | "samples_us" | "celeriac" | "mode"))
            .map(|(k, v)| match v {
                Value::String(s) => format!("{k}={s}"),
                _ => format!("{k}={v}"),
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn mode(&self) -> String {
        self.params
            .iter()
            .find(|(k, _)| *k == "mode")
            .and_then(|(_, v)| v.as_str())
            .unwrap_or("")
            .to_string()
    }
}

/// A JSON number (non-finite values become `null`).
fn number(v: f64) -> Value {
    serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number)
}

/// Rounds to `digits` decimals.
pub(crate) fn round(v: f64, digits: i32) -> f64 {
    let p = 10f64.powi(digits);
    (v * p).round() / p
}

/// The 1-minute load average, or NaN where unknown.
pub(crate) fn loadavg_1m() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// Writes `m` to stdout as a JSON line (flushed), logs it on stderr and
/// records it for [`print_summary`].
pub(crate) fn emit(m: Measurement) {
    let line = m.json_line();
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
    log(&format!(
        "{} {} {} {} = {} {}  {}",
        m.workload,
        m.system,
        m.mode(),
        m.metric,
        fmt_value(m.value),
        m.unit,
        m.shown_params()
    ));
    RECORDED.lock().unwrap_or_else(|e| e.into_inner()).push(m);
}

/// A progress line on stderr.
pub(crate) fn log(msg: &str) {
    eprintln!("[celeriac-bench] {msg}");
}

/// Formats a value the way the peers' `report.py` does.
pub(crate) fn fmt_value(v: f64) -> String {
    if !v.is_finite() {
        return "n/a".into();
    }
    if v.abs() >= 1000.0 {
        let s = format!("{:.0}", v.abs());
        let mut grouped = String::new();
        for (i, c) in s.chars().enumerate() {
            if i > 0 && (s.len() - i).is_multiple_of(3) {
                grouped.push(',');
            }
            grouped.push(c);
        }
        if v < 0.0 {
            format!("-{grouped}")
        } else {
            grouped
        }
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

/// Prints every measurement taken so far as an aligned table on stderr.
pub(crate) fn print_summary() {
    let rows = RECORDED.lock().unwrap_or_else(|e| e.into_inner()).clone();
    if rows.is_empty() {
        return;
    }
    let mut table: Vec<[String; 7]> = vec![[
        "workload".into(),
        "system".into(),
        "mode".into(),
        "metric".into(),
        "value".into(),
        "unit".into(),
        "params".into(),
    ]];
    for m in &rows {
        table.push([
            m.workload.to_string(),
            m.system.clone(),
            m.mode(),
            m.metric.to_string(),
            fmt_value(m.value),
            m.unit.to_string(),
            m.shown_params(),
        ]);
    }
    let widths: Vec<usize> = (0..6)
        .map(|i| table.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err);
    for (i, row) in table.iter().enumerate() {
        let mut line = String::new();
        for (j, w) in widths.iter().enumerate() {
            if j == 4 {
                line.push_str(&format!("{:>w$}  ", row[j]));
            } else {
                line.push_str(&format!("{:<w$}  ", row[j]));
            }
        }
        line.push_str(&row[6]);
        let _ = writeln!(err, "{}", line.trim_end());
        if i == 0 {
            let dashes: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
            let _ = writeln!(err, "{}  ------", dashes.join("  "));
        }
    }
}

/// Median of samples (mean of the middle two for an even count).
pub(crate) fn median(samples: &[f64]) -> f64 {
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => v[n / 2],
        _ => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Linear-interpolated percentile (`q` in 0..=100) of sorted values, as the
/// peers compute it.
pub(crate) fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let k = (sorted.len() - 1) as f64 * q / 100.0;
    let lo = k.floor() as usize;
    let hi = (lo + 1).min(sorted.len() - 1);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (k - lo as f64)
}

/// Rounded samples as a JSON array.
pub(crate) fn samples(values: &[f64], digits: i32) -> Value {
    Value::Array(values.iter().map(|v| number(round(*v, digits))).collect())
}
