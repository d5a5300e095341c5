//! Unit tests of the canvas: what a finished task sends on, checked
//! against the wire shapes Celery 5.7 sends (the reference's §1).

use std::sync::Arc;

use super::*;
use celeriac_core::{Args, ResultBackend, State, TaskContext, TaskError};
use serde_json::json;

fn chained() -> Message {
    let mut m = Message::new("tasks.add", vec![json!(1), json!(2)], Default::default());
    m.embed.chain = Some(vec![
        json!({"task": "tasks.mul", "args": [10], "options": {"task_id": "C"}}),
        json!({"task": "tasks.inc", "args": [], "options": {"task_id": "B"}}),
    ]);
    m.embed.callbacks = Some(vec![json!({"task": "tasks.log", "args": ["done"]})]);
    m.embed.errbacks = Some(vec![json!({"task": "tasks.on_err", "args": []})]);
    m
}

fn sig(task: &str, args: Value, id: &str) -> Value {
    json!({"task": task, "args": args, "kwargs": {}, "options": {"task_id": id},
           "subtask_type": null, "immutable": false})
}

fn group(id: &str, tasks: Vec<Value>) -> Value {
    json!({"task": "celery.group", "args": [], "kwargs": {"tasks": tasks},
           "options": {"task_id": id}, "subtask_type": "group", "immutable": false})
}

fn chain(tasks: Vec<Value>) -> Value {
    json!({"task": "celery.chain", "args": [], "kwargs": {"tasks": tasks},
           "options": {}, "subtask_type": "chain", "immutable": false})
}

fn chord(header: Value, body: Value, id: &str) -> Value {
    json!({"task": "celery.chord", "args": [],
           "kwargs": {"header": header, "body": body, "kwargs": {}},
           "options": {"task_id": id}, "subtask_type": "chord", "immutable": false})
}

/// A finished task `A` whose message carries `chain`, and its success.
fn finished(chain: Vec<Value>, result: Value) -> (Message, ResultMeta) {
    let mut m = Message::with_id("tasks.add", "A", vec![json!(1), json!(2)], Map::new());
    m.headers.root_id = Some("A".into());
    m.embed.chain = Some(chain);
    let r = ResultMeta::success("A", result);
    (m, r)
}

#[test]
fn a_success_sends_the_callbacks_then_the_next_step_and_lists_them_as_children() {
    let m = chained();
    let mut result = ResultMeta::success(m.id(), json!(3));
    let c = on_success(&m, &mut result);
    assert!(c.problems.is_empty(), "{:?}", c.problems);
    assert_eq!(c.before.len(), 2);
    let cb = &c.before[0];
    assert_eq!(cb.task(), "tasks.log", "callbacks first, as Celery 5.7");
    assert_eq!(cb.args, vec![json!(3), json!("done")]);
    let next = &c.before[1];
    assert_eq!((next.task(), next.id()), ("tasks.inc", "B"));
    assert_eq!(next.args, vec![json!(3)]);
    assert_eq!(next.headers.parent_id.as_deref(), Some(m.id()));
    assert_eq!(
        next.embed.chain,
        Some(vec![
            json!({"task": "tasks.mul", "args": [10], "options": {"task_id": "C"}})
        ]),
        "the rest of the chain travels with the next step"
    );
    assert!(c.after.is_empty() && c.also_store.is_empty() && c.chords.is_empty());
    assert_eq!(result.children.len(), 2);
    assert_eq!(result.children[1], json!([["B", null], null]));
}

#[test]
fn a_failure_fails_every_remaining_step_and_calls_the_errbacks_as_one_group() {
    let mut m = chained();
    m.embed.errbacks = Some(vec![
        json!({"task": "tasks.on_err", "args": []}),
        json!({"task": "tasks.other_err", "args": ["x"]}),
    ]);
    let result = ResultMeta::failure(m.id(), &TaskError::new("boom"));
    let c = on_failure(&m, &result, &NoTasks);
    assert!(c.before.is_empty(), "nothing of the chain is sent on");
    let ids: Vec<&str> = c.also_store.iter().map(|r| r.task_id.as_str()).collect();
    assert_eq!(ids, ["C", "B"]);
    assert!(c.also_store.iter().all(|r| r.status == State::Failure));
    assert_eq!(c.after.len(), 2);
    assert_eq!(c.after[0].args, vec![json!(m.id())]);
    assert_eq!(c.after[1].args, vec![json!(m.id()), json!("x")]);
    assert_eq!(
        c.after[0].headers.group, c.after[1].headers.group,
        "one group, as Celery's group(old_signature)"
    );
    assert!(c.after[0].headers.group.is_some());
    assert_eq!(
        (
            c.after[0].headers.group_index,
            c.after[1].headers.group_index
        ),
        (Some(0), Some(1))
    );
    assert_eq!(c.after[0].headers.parent_id.as_deref(), Some(m.id()));
}

#[test]
fn a_plain_message_sends_nothing_and_a_bad_signature_is_reported() {
    let plain = Message::new("t", vec![], Default::default());
    let mut r = ResultMeta::success(plain.id(), json!(1));
    let c = on_success(&plain, &mut r);
    assert!(c.sends_nothing() && c.problems.is_empty());
    let mut bad = plain.clone();
    bad.embed.chain = Some(vec![json!({"args": []})]);
    let c = on_success(&bad, &mut r);
    assert!(c.before.is_empty());
    assert_eq!(c.problems.len(), 1);
    bad.embed.chain = Some(vec![
        json!({"task": "celery.chord", "subtask_type": "chord"}),
    ]);
    let c = on_success(&bad, &mut r);
    assert!(c.before.is_empty() && c.chords.is_empty());
    assert!(
        c.problems[0].contains("without kwargs.header"),
        "{:?}",
        c.problems
    );
}

#[test]
fn several_callbacks_go_as_one_group_and_a_group_callback_on_its_own() {
    let mut m = Message::with_id("t.a", "A", vec![], Map::new());
    m.embed.callbacks = Some(vec![
        sig("t.x", json!([]), "X"),
        group("G", vec![sig("t.g0", json!([]), "G0")]),
        sig("t.y", json!([1]), "Y"),
    ]);
    let mut r = ResultMeta::success("A", json!(5));
    let c = on_success(&m, &mut r);
    assert!(c.problems.is_empty(), "{:?}", c.problems);
    let by_id = |id: &str| c.before.iter().find(|m| m.id() == id).unwrap();
    assert_eq!(by_id("G0").headers.group.as_deref(), Some("G"));
    let (x, y) = (by_id("X"), by_id("Y"));
    assert_eq!(x.headers.group, y.headers.group);
    assert_ne!(x.headers.group.as_deref(), Some("G"));
    assert_eq!(
        (x.headers.group_index, y.headers.group_index),
        (Some(0), Some(1))
    );
    assert_eq!(y.args, vec![json!(5), json!(1)]);
    assert_eq!(
        r.children.len(),
        2,
        "one group tuple each: {:?}",
        r.children
    );
}

#[test]
fn a_group_at_the_end_of_a_chain_publishes_its_tasks_with_the_result_prepended() {
    let mut frozen = sig("t.inc", json!([]), "I1");
    frozen["immutable"] = json!(true);
    let (m, mut r) = finished(
        vec![group("G", vec![sig("t.inc", json!([]), "I0"), frozen])],
        json!(3),
    );
    let c = on_success(&m, &mut r);
    assert!(c.problems.is_empty(), "{:?}", c.problems);
    assert_eq!(c.before.len(), 2);
    for (i, h) in c.before.iter().enumerate() {
        assert_eq!(h.headers.group.as_deref(), Some("G"));
        assert_eq!(h.headers.group_index, Some(i as u64));
        assert_eq!(h.headers.parent_id.as_deref(), Some("A"));
        assert_eq!(h.headers.root_id.as_deref(), Some("A"));
        assert_eq!(h.embed.chord, None);
    }
    assert_eq!(c.before[0].args, vec![json!(3)]);
    assert!(
        c.before[1].args.is_empty(),
        "an immutable task gets nothing"
    );
    assert!(c.chords.is_empty(), "a plain group starts no chord");
    assert_eq!(
        r.children,
        vec![json!([
            ["G", null],
            [[["I0", null], null], [["I1", null], null]]
        ])]
    );
}

#[test]
fn a_chord_step_publishes_its_header_and_records_its_size_as_celery_does() {
    // §1.7: chain(add.s(1, 2), group(inc.s(), inc.s()), tsum.s()) as the
    // client sends it: the group and tsum became a chord.
    let mut h0 = sig("t.inc", json!([]), "i0");
    h0["options"]["group_index"] = json!(0);
    let mut h1 = sig("t.inc", json!([]), "i1");
    h1["options"]["group_index"] = json!(1);
    let header = group("G", vec![h0, h1]);
    let step = chord(header, sig("t.tsum", json!([]), "T"), "G");
    let (m, mut r) = finished(vec![sig("t.after", json!([]), "Z"), step], json!(3));
    let c = on_success(&m, &mut r);
    assert!(c.problems.is_empty(), "{:?}", c.problems);
    assert_eq!(c.before.len(), 2, "the two header tasks, nothing else");
    assert_eq!(c.chords.len(), 1);
    assert_eq!((c.chords[0].group_id.as_str(), c.chords[0].size), ("G", 2));
    let unlock = &c.chords[0].unlock;
    assert_eq!(unlock.task(), "celery.chord_unlock");
    assert_eq!(unlock.args[0], json!("G"));
    for (i, h) in c.before.iter().enumerate() {
        assert_eq!(h.id(), format!("i{i}"));
        assert_eq!(h.args, vec![json!(3)]);
        assert_eq!(h.headers.group.as_deref(), Some("G"));
        assert_eq!(h.headers.group_index, Some(i as u64));
        assert_eq!(h.headers.parent_id.as_deref(), Some("A"));
        assert_eq!(h.headers.root_id.as_deref(), Some("A"));
        let body = h
            .embed
            .chord
            .as_ref()
            .expect("the body rides on each header");
        assert_eq!(body["task"], "t.tsum");
        assert_eq!(body["options"]["task_id"], "T");
        assert_eq!(body["options"]["group_id"], "G");
        assert_eq!(
            body["options"]["chain"],
            json!([sig("t.after", json!([]), "Z")]),
            "the rest of the chain continues from the body"
        );
    }
    assert_eq!(
        r.children,
        vec![json!([
            ["G", null],
            [[["i0", null], null], [["i1", null], null]]
        ])]
    );
}

#[test]
fn a_group_with_steps_after_it_becomes_a_chord() {
    let (m, mut r) = finished(
        vec![
            sig("t.sum", json!([]), "S"),
            group(
                "G",
                vec![sig("t.a", json!([]), "a"), sig("t.b", json!([]), "b")],
            ),
        ],
        json!(1),
    );
    let c = on_success(&m, &mut r);
    assert!(c.problems.is_empty(), "{:?}", c.problems);
    assert_eq!((c.chords[0].group_id.as_str(), c.chords[0].size), ("G", 2));
    let body = c.before[0].embed.chord.as_ref().unwrap();
    assert_eq!(body["options"]["task_id"], "S");
    assert!(c.before.iter().all(|h| h.embed.chain == Some(vec![])));
}

#[test]
fn a_chain_step_publishes_its_first_task_with_the_rest_before_the_outer_rest() {
    let inner = chain(vec![
        sig("t.one", json!([]), "1"),
        sig("t.two", json!([]), "2"),
        sig("t.three", json!([]), "3"),
    ]);
    let (m, mut r) = finished(vec![sig("t.outer", json!([]), "O"), inner], json!(7));
    let c = on_success(&m, &mut r);
    assert!(c.problems.is_empty(), "{:?}", c.problems);
    assert_eq!(c.before.len(), 1);
    let first = &c.before[0];
    assert_eq!(
        (first.task(), first.args.clone()),
        ("t.one", vec![json!(7)])
    );
    let ids: Vec<&str> = first
        .embed
        .chain
        .iter()
        .flatten()
        .map(|s| s["options"]["task_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["O", "3", "2"], "popped from the end: 2, 3, then O");
    assert_eq!(r.children, vec![json!([["1", null], null])]);
}

#[test]
fn a_chord_whose_body_is_a_chain_sends_the_chain_with_the_results() {
    let body = chain(vec![
        sig("t.b1", json!([]), "B1"),
        sig("t.b2", json!([]), "B2"),
    ]);
    let part = ChordPart {
        group_id: "G".into(),
        index: Some(1),
        part: json!([1, "h1", "SUCCESS", 20]),
        body,
    };
    let mut last = Message::with_id("t.h", "h1", vec![], Map::new());
    last.headers.root_id = Some("h1".into());
    let parts = [
        json!([1, "h0", "SUCCESS", 10]),
        json!([1, "h1", "SUCCESS", 20]),
    ];
    let Completion::Body(out) = chord_complete(&part, &last, &parts, &NoTasks).unwrap() else {
        panic!("the parts succeeded")
    };
    assert_eq!(out.messages.len(), 1);
    let b1 = &out.messages[0];
    assert_eq!((b1.task(), b1.id()), ("t.b1", "B1"));
    assert_eq!(b1.args, vec![json!([10, 20])]);
    assert_eq!(b1.headers.parent_id.as_deref(), Some("h1"));
    assert_eq!(
        b1.embed.chain.as_ref().unwrap()[0]["options"]["task_id"],
        "B2"
    );
}

#[test]
fn a_failed_part_fails_the_body_with_a_chord_error_naming_the_first_failure() {
    let mut body = sig("t.tsum", json!([]), "BODY");
    body["options"]["group_id"] = json!("G");
    body["options"]["link_error"] = sig("t.on_err", json!([]), "E");
    let part = ChordPart {
        group_id: "G".into(),
        index: Some(2),
        part: json!(null),
        body,
    };
    let boom = json!({"exc_type": "ValueError", "exc_message": ["boom"], "exc_module": "builtins"});
    let other = json!({"exc_type": "KeyError", "exc_message": ["k"], "exc_module": "builtins"});
    let parts = [
        json!([1, "h0", "SUCCESS", 1]),
        json!([1, "h1", "FAILURE", boom]),
        json!([1, "h2", "FAILURE", other]),
    ];
    let last = Message::with_id("t.h", "h2", vec![], Map::new());
    let Completion::Failed(f) = chord_complete(&part, &last, &parts, &NoTasks).unwrap() else {
        panic!("a part failed")
    };
    assert_eq!(f.metas.len(), 1);
    let meta = &f.metas[0];
    assert_eq!(
        (meta.task_id.as_str(), meta.status.clone()),
        ("BODY", State::Failure)
    );
    assert_eq!(meta.group_id.as_deref(), Some("G"));
    assert_eq!(meta.result["exc_type"], "ChordError");
    assert_eq!(meta.result["exc_module"], "celery.exceptions");
    assert_eq!(
        meta.result["exc_message"],
        json!(["Dependency h1 raised ValueError('boom')"])
    );
    let eb = &f.errbacks.messages[0];
    assert_eq!((eb.task(), eb.id()), ("t.on_err", "E"));
    assert_eq!(eb.args, vec![json!("BODY")]);
    assert_eq!(eb.headers.parent_id.as_deref(), Some("BODY"));
    assert_eq!(eb.headers.root_id.as_deref(), Some("BODY"));
    assert_eq!(eb.headers.group_index, Some(0));
}

#[test]
fn a_chord_of_chords_counts_each_inner_chord_once_and_chains_the_inner_bodies() {
    let inner = |n: &str| {
        chord(
            group(
                &format!("g{n}"),
                vec![
                    sig("t.x", json!([]), &format!("{n}a")),
                    sig("t.x", json!([]), &format!("{n}b")),
                ],
            ),
            sig("t.inner", json!([]), &format!("{n}body")),
            &format!("g{n}"),
        )
    };
    let outer = chord(
        group("G", vec![inner("1"), inner("2")]),
        sig("t.outer", json!([]), "OUT"),
        "G",
    );
    assert_eq!(
        apply::descend(&outer["kwargs"]["header"]),
        2,
        "one per inner chord"
    );
    assert_eq!(apply::descend(&outer), 1, "a chord counts as its body");
    let (m, mut r) = finished(vec![outer], json!(0));
    let c = on_success(&m, &mut r);
    assert!(c.problems.is_empty(), "{:?}", c.problems);
    let sizes: Vec<(&str, u64)> = c
        .chords
        .iter()
        .map(|c| (c.group_id.as_str(), c.size))
        .collect();
    assert_eq!(sizes, [("G", 2), ("g1", 2), ("g2", 2)]);
    assert_eq!(c.before.len(), 4, "the four inner header tasks");
    let first = &c.before[0];
    assert_eq!(first.headers.group.as_deref(), Some("g1"));
    let inner_body = first.embed.chord.as_ref().unwrap();
    assert_eq!(inner_body["options"]["task_id"], "1body");
    assert_eq!(
        inner_body["options"]["group_id"], "G",
        "the inner body is a part of G"
    );
    assert_eq!(inner_body["options"]["group_index"], 0);
    assert_eq!(inner_body["options"]["chord"]["options"]["task_id"], "OUT");
}

#[test]
fn an_empty_header_calls_the_body_at_once_with_nothing() {
    let (m, mut r) = finished(
        vec![chord(
            group("G", vec![]),
            sig("t.tsum", json!([]), "T"),
            "G",
        )],
        json!(0),
    );
    let c = on_success(&m, &mut r);
    assert!(c.chords.is_empty());
    assert_eq!(c.before[0].id(), "T");
    assert_eq!(c.before[0].args, vec![json!([])]);
}

#[test]
fn the_unlock_message_has_celerys_shape() {
    let mut parent = Message::with_id("t.a", "A", vec![], Map::new());
    parent.headers.root_id = Some("R".into());
    let mut body = sig("t.tsum", json!([]), "T");
    body["options"]["queue"] = json!("q2");
    let tuples = vec![json!([["h0", null], null])];
    let u = unlock::unlock_message(&parent, "G", &body, tuples.clone()).unwrap();
    assert_eq!(u.task(), "celery.chord_unlock");
    assert_eq!(u.args, vec![json!("G"), body]);
    assert_eq!(u.kwargs["result"], Value::Array(tuples));
    assert_eq!(u.kwargs["interval"], Value::Null);
    assert_eq!(u.headers.ignore_result, Some(true));
    assert_eq!(u.queue(), "q2", "the body's queue");
    let eta = u.eta_unix().expect("due in a second");
    let now = celeriac_core::time::unix_now();
    assert!(eta > now && eta < now + 2.0, "{eta} vs {now}");
    assert_eq!(u.headers.parent_id.as_deref(), Some("A"));
    assert_eq!(u.headers.root_id.as_deref(), Some("R"));
    assert_eq!(u.embed.chain, None);
}

/// A `celery.chord_unlock` as a client sends it (§1.5).
fn unlock_msg(ids: &[&str]) -> Message {
    let mut body = sig("t.tsum", json!([]), "BODY");
    body["options"]["group_id"] = json!("G");
    body["options"]["link_error"] = json!([sig("t.on_err", json!([]), "E")]);
    let mut kw = Map::new();
    kw.insert("interval".into(), json!(null));
    kw.insert("max_retries".into(), json!(null));
    kw.insert(
        "result".into(),
        json!(
            ids.iter()
                .map(|i| json!([[i, null], null]))
                .collect::<Vec<_>>()
        ),
    );
    kw.insert("_chord_unlock_exchange_type".into(), json!("direct"));
    let mut m = Message::with_id("celery.chord_unlock", "U", vec![json!("G"), body], kw);
    m.headers.root_id = Some("U".into());
    m
}

async fn run_unlock(backend: Arc<dyn ResultBackend>, m: &Message) -> Result<Value, TaskError> {
    let reg = crate::celery_tasks::registry(&Arc::new(celeriac_core::Registry::new()), &backend);
    let task = reg.get("celery.chord_unlock").unwrap();
    let ctx = TaskContext::from_message(m, "w@test");
    task.invoke_async(ctx, Args::new(m.args.clone(), m.kwargs.clone()))
        .await
}

#[tokio::test]
async fn the_unlock_retries_until_every_part_is_ready_then_returns_them_in_order() {
    let backend: Arc<dyn ResultBackend> = Arc::new(celeriac_embedded::MemoryBackend::new());
    let m = unlock_msg(&["h0", "h1"]);
    backend
        .store(&ResultMeta::success("h1", json!(2)))
        .await
        .unwrap();
    let err = run_unlock(backend.clone(), &m).await.unwrap_err();
    assert_eq!(err.exc_type(), "Retry");
    assert_eq!(
        err.countdown(),
        Some(1.0),
        "interval defaults to one second"
    );
    backend
        .store(&ResultMeta::success("h0", json!(1)))
        .await
        .unwrap();
    let got = run_unlock(backend.clone(), &m).await.unwrap();
    assert_eq!(got, json!([1, 2]));
    let mut r = ResultMeta::success("U", got);
    let c = on_success(&m, &mut r);
    assert!(c.problems.is_empty(), "{:?}", c.problems);
    let body = &c.before[0];
    assert_eq!((body.task(), body.id()), ("t.tsum", "BODY"));
    assert_eq!(body.args, vec![json!([1, 2])]);
    assert_eq!(body.headers.parent_id.as_deref(), Some("U"));
    assert_eq!(body.headers.root_id.as_deref(), Some("U"));
    assert_eq!(body.headers.group.as_deref(), Some("G"));
}

#[tokio::test]
async fn the_unlock_fails_the_body_when_a_part_failed_or_its_retries_run_out() {
    let backend: Arc<dyn ResultBackend> = Arc::new(celeriac_embedded::MemoryBackend::new());
    let m = unlock_msg(&["h0", "h1"]);
    backend
        .store(&ResultMeta::success("h0", json!(1)))
        .await
        .unwrap();
    let boom = TaskError::typed("ValueError", "builtins", "boom");
    backend
        .store(&ResultMeta::failure("h1", &boom))
        .await
        .unwrap();
    let err = run_unlock(backend.clone(), &m).await.unwrap_err();
    assert_eq!(err.exc_type(), "ChordError");
    assert_eq!(err.message(), "Dependency h1 raised ValueError('boom')");
    let c = on_failure(&m, &ResultMeta::failure("U", &err), &NoTasks);
    assert_eq!(c.also_store.len(), 1);
    assert_eq!(c.also_store[0].task_id, "BODY");
    assert_eq!(c.also_store[0].result["exc_type"], "ChordError");
    assert_eq!(c.after.len(), 1);
    assert_eq!(c.after[0].args, vec![json!("BODY")]);
    // A message's own max_retries: past it, the body fails too.
    let mut limited = unlock_msg(&["never"]);
    limited.kwargs.insert("max_retries".into(), json!(2));
    limited.headers.retries = 2;
    let err = run_unlock(backend, &limited).await.unwrap_err();
    assert_eq!(err.exc_type(), "ChordError");
    assert!(err.message().contains("MaxRetriesExceededError"), "{err}");
}

#[test]
fn exceptions_are_shown_as_python_shows_them() {
    let exc = |t: &str, m: Value| json!({"exc_type": t, "exc_message": m});
    assert_eq!(
        exception_repr(&exc("ValueError", json!(["boom"]))),
        "ValueError('boom')"
    );
    assert_eq!(
        exception_repr(&exc("KeyError", json!(["it's"]))),
        "KeyError(\"it's\")"
    );
    assert_eq!(
        exception_repr(&exc("E", json!(["a", 1, null, true, [2.5]]))),
        "E('a', 1, None, True, [2.5])"
    );
    assert_eq!(exception_repr(&exc("E", json!([]))), "E()");
    assert_eq!(py_str_repr("a\\b\n'\""), "'a\\\\b\\n\\'\"'");
}

#[test]
fn chunks_in_a_chain_become_a_group_of_starmaps() {
    let chunks = json!({"task": "celery.chunks", "args": [],
        "kwargs": {"task": sig("t.add", json!([]), "x"), "it": [[1, 1], [2, 2], [3, 3]], "n": 2},
        "options": {"task_id": "C"}, "subtask_type": "chunks", "immutable": true});
    let (m, mut r) = finished(vec![chunks], json!(0));
    let c = on_success(&m, &mut r);
    assert!(c.problems.is_empty(), "{:?}", c.problems);
    assert_eq!(c.before.len(), 2, "two chunks of at most 2");
    assert!(c.before.iter().all(|s| s.task() == "celery.starmap"));
    assert!(
        c.before.iter().all(|s| s.args.is_empty()),
        "starmaps are immutable"
    );
    assert_eq!(c.before[1].kwargs["it"], json!([[3, 3]]));
    assert_eq!(c.before[0].headers.group.as_deref(), Some("C"));
}

#[test]
fn the_chunks_task_sends_its_group_of_starmaps() {
    let m = Message::with_id(
        "celery.chunks",
        "K",
        vec![
            sig("t.add", json!([]), "x"),
            json!([[1, 1], [2, 2], [3, 3]]),
            json!(1),
        ],
        Map::new(),
    );
    let mut r = ResultMeta::success("K", Value::Null);
    let c = on_success(&m, &mut r);
    assert!(c.problems.is_empty(), "{:?}", c.problems);
    assert_eq!(c.before.len(), 3);
    assert_eq!(c.before[2].kwargs["it"], json!([[3, 3]]));
    assert_eq!(c.before[0].headers.parent_id.as_deref(), Some("K"));
    assert_eq!(r.children.len(), 1, "the group is K's child");
    let bad = Message::with_id("celery.chunks", "K", vec![json!(1)], Map::new());
    assert_eq!(on_success(&bad, &mut r).problems.len(), 1);
}
