//! Python `repr()` of JSON values, as Celery writes them into `argsrepr`,
//! `kwargsrepr` and the `result` of its events (truncated like `saferepr`).

use serde_json::{Map, Value};

/// Python-style repr of JSON values, truncated as Celery does (1024 chars).
fn py_repr(v: &Value, out: &mut String) {
    match v {
        Value::Null => out.push_str("None"),
        Value::Bool(true) => out.push_str("True"),
        Value::Bool(false) => out.push_str("False"),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => {
            out.push('\'');
            for c in s.chars() {
                match c {
                    '\'' => out.push_str("\\'"),
                    '\\' => out.push_str("\\\\"),
                    '\n' => out.push_str("\\n"),
                    c => out.push(c),
                }
            }
            out.push('\'');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                py_repr(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            for (i, (k, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                py_repr(&Value::String(k.clone()), out);
                out.push_str(": ");
                py_repr(item, out);
            }
            out.push('}');
        }
    }
}

fn truncate_repr(mut s: String) -> String {
    if s.len() > 1024 {
        let mut cut = 1021;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("...");
    }
    s
}

/// Python's `repr()` of a JSON value (`None`, `True`, `'text'`, `[1, 2]`,
/// `{'k': 1}`), truncated as Celery's `saferepr` truncates (1024 chars):
/// what Celery's events carry as a task's `result`.
pub fn value_repr(v: &Value) -> String {
    let mut out = String::new();
    py_repr(v, &mut out);
    truncate_repr(out)
}

/// `argsrepr` for positional args: a Python tuple repr.
pub fn args_repr(args: &[Value]) -> String {
    let mut out = String::from("(");
    for (i, a) in args.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        py_repr(a, &mut out);
    }
    if args.len() == 1 {
        out.push(',');
    }
    out.push(')');
    truncate_repr(out)
}

/// `kwargsrepr`: a Python dict repr.
pub fn kwargs_repr(kwargs: &Map<String, Value>) -> String {
    let mut out = String::new();
    py_repr(&Value::Object(kwargs.clone()), &mut out);
    truncate_repr(out)
}
