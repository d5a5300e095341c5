//! Tests of the report's tables.

use super::*;

fn rows(lines: &str) -> Rows {
    Rows(
        lines
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect(),
    )
}

#[test]
fn w7_compares_the_map_with_the_pool() {
    let r = rows(concat!(
        r#"{"workload":"W7","n":1000000,"system":"celeriac-redis","metric":"seconds","value":0.84,"rate":1190476,"worker_processes":2,"chunk_stats":{"chunks":37}}"#,
        "\n",
        r#"{"workload":"W7","n":1000000,"system":"python-mp-pool","metric":"seconds","value":0.2,"rate":5000000}"#,
    ));
    let text = render(&r);
    assert!(text.contains("## W7"), "{text}");
    let ours = text
        .lines()
        .find(|l| l.starts_with("| `celeriac-redis`"))
        .expect("celeriac's row");
    assert!(ours.contains("| 37 |"), "{ours}");
    assert!(ours.ends_with("| 0.24× |"), "{ours}");
}

#[test]
fn w7_is_left_out_without_its_lines() {
    let r =
        rows(r#"{"workload":"W6","system":"celery-prefork","metric":"group_drain","value":1.0}"#);
    assert!(!render(&r).contains("W7"));
}
