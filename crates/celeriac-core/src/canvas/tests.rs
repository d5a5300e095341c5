//! The lowering against what Python Celery 5.7's client sent for the same
//! canvases (`fixtures/python_canvas.json`, recorded by
//! `tests/python/canvas_fixtures.py`): the same messages in the same
//! order, the same chord sizes recorded at the same moment, the same result
//! tree. Ids differ, so both sides have every id replaced by its order of
//! first appearance.

use std::collections::HashMap;

use serde_json::{Value, json};

use super::*;
use crate::task::Call;

const FIXTURES: &str = include_str!("fixtures/python_canvas.json");

fn add(x: i64, y: i64) -> Call<i64> {
    Call::new("tasks.add").arg(x).arg(y)
}
fn add_s(y: i64) -> Sig<i64, i64> {
    Call::new("tasks.add").arg(y).partial()
}
fn tsum() -> Sig<Vec<i64>, i64> {
    Call::new("tasks.tsum").partial()
}
fn echo<T>() -> Sig<T, Value> {
    Call::new("tasks.echo").partial()
}

/// The headers that carry canvas structure; the rest are the message
/// codec's business.
const HEADERS: [&str; 6] = ["task", "id", "group", "group_index", "root_id", "parent_id"];

fn events(plan: &Plan) -> Value {
    let events: Vec<Value> = plan
        .actions
        .iter()
        .map(|a| match a {
            Action::Publish(m) => {
                let headers = serde_json::to_value(&m.headers).unwrap();
                let body: Value = serde_json::from_slice(&m.body_json().unwrap()).unwrap();
                json!({"publish": {
                    "routing_key": m.queue(),
                    "priority": if m.properties.priority == 0 { Value::Null } else { json!(m.properties.priority) },
                    "headers": pick(&headers),
                    "body": body,
                }})
            }
            Action::ChordSize { group_id, size } => json!({"chord_size": [group_id, size]}),
        })
        .collect();
    json!({"events": events, "result": plan.result.as_tuple()})
}

fn pick(headers: &Value) -> Value {
    Value::Object(
        HEADERS
            .iter()
            .map(|k| {
                (
                    k.to_string(),
                    headers.get(*k).cloned().unwrap_or(Value::Null),
                )
            })
            .collect(),
    )
}

fn python(name: &str) -> Value {
    let all: Value = serde_json::from_str(FIXTURES).unwrap();
    let f = &all[name];
    assert!(f.is_object(), "no fixture {name}");
    let events: Vec<Value> = f["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e.get("save_group").is_none())
        .map(|e| match e.get("publish") {
            Some(p) => {
                let mut p = p.clone();
                p["headers"] = pick(&p["headers"]);
                json!({ "publish": p })
            }
            None => e.clone(),
        })
        .collect();
    json!({"events": events, "result": f["result"]})
}

fn is_id(s: &str) -> bool {
    s.len() == 36 && s.chars().filter(|c| *c == '-').count() == 4
}

/// Every id replaced by `<n>`, n its order of first appearance, walking
/// objects in key order.
fn normalize(v: &Value, ids: &mut HashMap<String, usize>) -> Value {
    match v {
        Value::String(s) if is_id(s) => {
            let n = ids.len();
            json!(format!("<{}>", *ids.entry(s.clone()).or_insert(n)))
        }
        Value::Array(a) => Value::Array(a.iter().map(|x| normalize(x, ids)).collect()),
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            Value::Object(
                keys.into_iter()
                    .map(|k| (k.clone(), normalize(&m[k], ids)))
                    .collect(),
            )
        }
        other => other.clone(),
    }
}

fn same_as_python(name: &str, plan: Plan) {
    let ours = normalize(&events(&plan), &mut HashMap::new());
    let theirs = normalize(&python(name), &mut HashMap::new());
    if ours != theirs {
        panic!(
            "{name} differs from Python Celery's client\n ours:   {}\n python: {}",
            serde_json::to_string_pretty(&ours).unwrap(),
            serde_json::to_string_pretty(&theirs).unwrap()
        );
    }
}

fn ctx() -> PlanContext<'static> {
    PlanContext::new(uuid::Uuid::new_v4().to_string())
}

fn check(name: &str, canvas: Canvas<impl Sized>) {
    same_as_python(name, canvas.plan(&ctx()).unwrap());
}

#[test]
fn a_task_with_links_is_sent_as_celery_sends_it() {
    check("task", Canvas::from(add(2, 2)));
    check("task_link", add(2, 2).link(add_s(10)));
    let mut cb = add_s(10);
    cb.freeze();
    check("task_link_frozen", add(2, 2).link(cb));
    check(
        "task_link_error",
        add(2, 2).link(add_s(10)).link_error(echo()),
    );
}

#[test]
fn a_chain_is_one_message_carrying_the_rest_reversed() {
    check(
        "chain",
        chain(add(1, 2))
            .then(add_s(10))
            .then(Call::<i64>::new("tasks.mul").arg(10).partial()),
    );
    check(
        "chain_immutable",
        chain(add(1, 2)).then(add(5, 5).immutable()).then(add_s(1)),
    );
    check(
        "chain_options",
        chain(add(1, 2).queue("py").priority(5)).then(
            Call::<i64>::new("tasks.mul")
                .arg(10)
                .queue("py")
                .priority(7)
                .partial(),
        ),
    );
    check("chain_link", chain(add(1, 2)).then(add_s(1)).link(echo()));
    check(
        "chain_link_error",
        chain(add(1, 2)).then(add_s(1)).link_error(echo()),
    );
}

#[test]
fn a_group_is_one_message_per_member() {
    let g = group((0..3).map(|i| add(i, i)));
    same_as_python("group", g.plan(&ctx()).unwrap());
    let g = group(vec![
        chain(add(1, 2)).then(add_s(1)),
        chain(add(3, 4)).then(add_s(1)),
    ]);
    same_as_python("group_of_chains", g.plan(&ctx()).unwrap());
    let g = Call::<i64>::new("tasks.add").chunks((0..5).map(|i| (i, i)), 2);
    same_as_python("chunks", g.plan(&ctx()).unwrap());
}

#[test]
fn a_saved_group_is_stored_as_celery_stores_it() {
    let plan = group((0..2).map(|i| add(i, i))).plan(&ctx()).unwrap();
    let all: Value = serde_json::from_str(FIXTURES).unwrap();
    let saved = all["group_save"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|e| e.get("save_group"))
        .unwrap()
        .clone();
    let ours = json!([plan.result.id(), plan.result.group_meta()]);
    assert_eq!(
        normalize(&ours, &mut HashMap::new()),
        normalize(&saved, &mut HashMap::new())
    );
    assert_eq!(
        ResultNode::from_group_meta(&plan.result.group_meta()).unwrap(),
        plan.result
    );
}

#[test]
fn a_chord_sends_its_header_and_records_its_size_before_the_last_part() {
    check("chord", chord((0..3).map(|i| add(i, i)), tsum()));
    check(
        "chord_body_errback",
        chord(vec![add(1, 1), add(2, 2)], tsum().link_error(echo())),
    );
    check(
        "chord_of_chains",
        chord(
            vec![
                chain(add(1, 1)).then(add_s(1)),
                chain(add(2, 2)).then(add_s(1)),
            ],
            tsum(),
        ),
    );
    check(
        "chord_of_chords",
        chord(
            vec![
                chord(vec![add(1, 1), add(2, 2)], tsum()),
                chord(vec![add(3, 3), add(4, 4)], tsum()),
            ],
            tsum(),
        ),
    );
    check(
        "chord_chain_body",
        chord(vec![add(1, 1), add(2, 2)], tsum().then(add_s(1))),
    );
}

#[test]
fn groups_and_chords_inside_chains_take_celerys_shapes() {
    check(
        "chain_group_head",
        group(vec![add(1, 1), add(2, 2)]).then(tsum()),
    );
    check(
        "chain_group_middle",
        chain(add(1, 2))
            .then(group(vec![add_s(1), add_s(2)]))
            .then(tsum()),
    );
    check(
        "chain_group_last",
        chain(add(1, 2)).then(group(vec![add_s(1), add_s(2)])),
    );
    check(
        "chain_chord_head",
        chain(chord(vec![add(1, 1), add(2, 2)], tsum())).then(add_s(1)),
    );
}

#[test]
fn map_and_starmap_are_one_builtin_message() {
    check("map", Call::<Value>::new("tasks.echo").map([1, 2, 3]));
    check(
        "starmap",
        Call::<i64>::new("tasks.add").starmap([(1, 2), (3, 4)]),
    );
}

#[test]
fn bad_calls_and_linked_groups_are_typed_errors() {
    let bad = chain(add(1, 2)).then(Call::<i64>::new("").partial::<i64>());
    assert!(matches!(
        bad.plan(&ctx()),
        Err(CanvasError::InvalidArguments(_))
    ));
    let linked = chain(add(1, 2))
        .then(group(vec![add_s(1), add_s(2)]))
        .link(echo());
    assert!(matches!(
        linked.plan(&ctx()),
        Err(CanvasError::Unsupported(_))
    ));
}

#[test]
fn routes_and_queues_reach_every_step() {
    let route = |name: &str| (name == "tasks.mul").then(|| "math".to_string());
    let ctx = PlanContext::new("c").route(&route);
    let plan = chain(Call::<i64>::new("tasks.mul").arg(1).arg(2))
        .then(Call::new("tasks.mul").arg(3).partial::<i64>())
        .then(add_s(1))
        .plan(&ctx)
        .unwrap();
    let first = plan.messages().next().unwrap();
    assert_eq!(first.queue(), "math");
    let rest = first.embed.chain.as_ref().unwrap();
    assert_eq!(rest[1]["options"]["queue"], "math");
    assert!(rest[0]["options"].get("queue").is_none());
}

#[test]
fn an_empty_chord_calls_its_body_with_no_results() {
    let plan = chord(Vec::<Call<i64>>::new(), tsum()).plan(&ctx()).unwrap();
    let msgs: Vec<_> = plan.messages().collect();
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].task(), "tasks.tsum");
    assert_eq!(msgs[0].args, vec![json!([])]);
    assert_eq!(plan.result.id(), msgs[0].id());
}
