//! The Celery protocol codec against real Celery envelopes, protocol v1,
//! kombu tags, malformed input, and property-based round trips.

use celeriac_core::message::{args_repr, kwargs_repr};
use celeriac_core::{CodecError, ExceptionInfo, Message, ResultMeta, State, TaskError};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

/// Observed with `LRANGE celery 0 -1` for
/// `send_task('tasks.add', args=(2,3), kwargs={'z':1})` (celery 5.7).
const CELERY_ENVELOPE: &str = r#"{"body": "W1syLCAzXSwgeyJ6IjogMX0sIHsiY2FsbGJhY2tzIjogbnVsbCwgImVycmJhY2tzIjogbnVsbCwgImNoYWluIjogbnVsbCwgImNob3JkIjogbnVsbH1d", "content-encoding": "utf-8", "content-type": "application/json", "headers": {"lang": "py", "task": "tasks.add", "id": "f2b687d9-fe7d-46fc-9a40-51f8d40bb0b2", "shadow": null, "eta": null, "expires": null, "group": null, "group_index": null, "retries": 0, "timelimit": [null, null], "root_id": "f2b687d9-fe7d-46fc-9a40-51f8d40bb0b2", "parent_id": null, "argsrepr": "(2, 3)", "kwargsrepr": "{'z': 1}", "origin": "gen4742@vm", "ignore_result": null, "replaced_task_nesting": 0, "stamped_headers": null, "stamps": {}}, "properties": {"correlation_id": "f2b687d9-fe7d-46fc-9a40-51f8d40bb0b2", "reply_to": "e4fc42c4-bff2-394b-9042-1f0dc6ef3a2d", "delivery_mode": 2, "delivery_info": {"exchange": "", "routing_key": "celery"}, "priority": 0, "body_encoding": "base64", "delivery_tag": "550fcf21-a66c-4d60-92aa-c6522a71176d"}}"#;

#[test]
fn decodes_the_observed_celery_envelope_exactly() {
    let m = Message::decode(CELERY_ENVELOPE.as_bytes()).unwrap();
    let h = &m.headers;
    assert_eq!(h.lang.as_deref(), Some("py"));
    assert_eq!(h.task, "tasks.add");
    assert_eq!(h.id, "f2b687d9-fe7d-46fc-9a40-51f8d40bb0b2");
    assert_eq!(h.shadow, None);
    assert_eq!(h.eta, None);
    assert_eq!(h.expires, None);
    assert_eq!(h.group, None);
    assert_eq!(h.group_index, None);
    assert_eq!(h.retries, 0);
    assert_eq!(h.timelimit, (None, None));
    assert_eq!(
        h.root_id.as_deref(),
        Some("f2b687d9-fe7d-46fc-9a40-51f8d40bb0b2")
    );
    assert_eq!(h.parent_id, None);
    assert_eq!(h.argsrepr.as_deref(), Some("(2, 3)"));
    assert_eq!(h.kwargsrepr.as_deref(), Some("{'z': 1}"));
    assert_eq!(h.origin.as_deref(), Some("gen4742@vm"));
    assert_eq!(h.ignore_result, None);
    assert_eq!(h.replaced_task_nesting, Some(0));
    assert_eq!(h.stamped_headers, None);
    assert_eq!(h.stamps, Some(json!({})));
    assert!(h.extra.is_empty(), "no unknown headers: {:?}", h.extra);

    let p = &m.properties;
    assert_eq!(p.correlation_id, "f2b687d9-fe7d-46fc-9a40-51f8d40bb0b2");
    assert_eq!(
        p.reply_to.as_deref(),
        Some("e4fc42c4-bff2-394b-9042-1f0dc6ef3a2d")
    );
    assert_eq!(p.delivery_mode, 2);
    assert_eq!(p.delivery_info.exchange, "");
    assert_eq!(p.delivery_info.routing_key, "celery");
    assert_eq!(p.priority, 0);
    assert_eq!(p.body_encoding, "base64");
    assert_eq!(p.delivery_tag, "550fcf21-a66c-4d60-92aa-c6522a71176d");

    assert_eq!(m.args, vec![json!(2), json!(3)]);
    assert_eq!(m.kwargs, json!({"z": 1}).as_object().unwrap().clone());
    assert_eq!(m.embed.callbacks, None);
    assert_eq!(m.embed.errbacks, None);
    assert_eq!(m.embed.chain, None);
    assert_eq!(m.embed.chord, None);
}

#[test]
fn re_encoding_the_celery_envelope_keeps_every_header_and_property() {
    let m = Message::decode(CELERY_ENVELOPE.as_bytes()).unwrap();
    let ours: Value = serde_json::from_slice(&m.encode().unwrap()).unwrap();
    let theirs: Value = serde_json::from_str(CELERY_ENVELOPE).unwrap();
    assert_eq!(ours["headers"], theirs["headers"]);
    assert_eq!(ours["properties"], theirs["properties"]);
    assert_eq!(ours["content-type"], "application/json");
    assert_eq!(ours["content-encoding"], "utf-8");
    // The body is the same JSON document (byte spacing may differ).
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let ours_body: Value =
        serde_json::from_slice(&b64.decode(ours["body"].as_str().unwrap()).unwrap()).unwrap();
    let theirs_body: Value =
        serde_json::from_slice(&b64.decode(theirs["body"].as_str().unwrap()).unwrap()).unwrap();
    assert_eq!(ours_body, theirs_body);
}

#[test]
fn our_messages_have_every_field_python_workers_read() {
    let m = Message::new("tasks.mul", vec![json!(6), json!(7)], Map::new());
    let env: Value = serde_json::from_slice(&m.encode().unwrap()).unwrap();
    for key in [
        "lang",
        "task",
        "id",
        "shadow",
        "eta",
        "expires",
        "group",
        "group_index",
        "retries",
        "timelimit",
        "root_id",
        "parent_id",
        "argsrepr",
        "kwargsrepr",
        "origin",
        "ignore_result",
        "replaced_task_nesting",
        "stamped_headers",
        "stamps",
    ] {
        assert!(env["headers"].get(key).is_some(), "header {key} missing");
    }
    assert_eq!(
        env["properties"]["delivery_info"],
        json!({"exchange": "", "routing_key": "celery"})
    );
    assert_eq!(env["properties"]["correlation_id"], env["headers"]["id"]);
    assert_eq!(env["properties"]["body_encoding"], "base64");
    assert_eq!(env["headers"]["timelimit"], json!([null, null]));
    let tag = env["properties"]["delivery_tag"].as_str().unwrap();
    assert!(
        uuid::Uuid::parse_str(tag).is_ok(),
        "delivery_tag is a UUID: {tag}"
    );
    let other = Message::new("tasks.mul", vec![], Map::new());
    assert_ne!(
        other.properties.delivery_tag, tag,
        "delivery tags are unique"
    );
}

#[test]
fn python_canvas_messages_are_accepted() {
    // `add.s(1, 2) | add.s(3)`: the first step carries the rest of the
    // chain in embed, plus a link callback and an errback.
    let body = json!([[1, 2], {}, {
        "callbacks": [{"task": "tasks.log", "args": [], "kwargs": {}, "options": {}, "subtask_type": null, "immutable": false}],
        "errbacks": null,
        "chain": [{"task": "tasks.add", "args": [3], "kwargs": {}, "options": {"task_id": "c1", "reply_to": "r"}, "subtask_type": null, "immutable": false, "chord_size": null}],
        "chord": null
    }]);
    let env = envelope(&body, json!({"task": "tasks.add", "id": "a1"}));
    let m = Message::decode(env.as_bytes()).unwrap();
    assert_eq!(m.embed.chain.as_ref().unwrap()[0]["task"], "tasks.add");
    assert_eq!(m.embed.callbacks.as_ref().unwrap().len(), 1);
    assert_eq!(m.args, vec![json!(1), json!(2)]);
}

fn envelope(body: &Value, headers: Value) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(serde_json::to_vec(body).unwrap());
    json!({
        "body": b64, "content-encoding": "utf-8", "content-type": "application/json",
        "headers": headers,
        "properties": {"delivery_info": {"exchange": "", "routing_key": "celery"}, "body_encoding": "base64", "delivery_tag": "t"}
    })
    .to_string()
}

#[test]
fn protocol_v1_is_converted() {
    let body = json!({
        "task": "tasks.add", "id": "v1-id", "args": [4, 5], "kwargs": {"k": true},
        "retries": 2, "eta": "2030-01-01T00:00:00", "expires": null, "utc": true,
        "callbacks": null, "errbacks": null, "timelimit": [10, 5], "taskset": "g1", "chord": null
    });
    let m = Message::decode(envelope(&body, json!({})).as_bytes()).unwrap();
    assert_eq!(m.task(), "tasks.add");
    assert_eq!(m.id(), "v1-id");
    assert_eq!(m.args, vec![json!(4), json!(5)]);
    assert_eq!(m.kwargs["k"], json!(true));
    assert_eq!(m.headers.retries, 2);
    assert_eq!(m.headers.timelimit, (Some(10.0), Some(5.0)));
    assert_eq!(m.headers.group.as_deref(), Some("g1"));
    assert_eq!(m.headers.root_id.as_deref(), Some("v1-id"));
    assert_eq!(m.properties.correlation_id, "v1-id");
    // A naive eta means UTC.
    assert_eq!(m.eta_unix(), Some(1_893_456_000.0));
}

#[test]
fn kombu_type_tags_are_decoded_in_args_and_kwargs() {
    let body = json!([
        [{"__type__": "datetime", "__value__": "2026-11-26T10:13:06.131039+00:00"},
         {"__type__": "decimal", "__value__": "3.14159265358979323846"}],
        {"u": {"__type__": "uuid", "__value__": {"hex": "f2b687d9fe7d46fc9a4051f8d40bb0b2"}},
         "b": {"__type__": "bytes", "__value__": "hi"},
         "raw": {"__type__": "base64", "__value__": "AAEC"},
         "nested": [{"__type__": "date", "__value__": "2026-11-26"}]},
        null
    ]);
    let m = Message::decode(envelope(&body, json!({"task": "t", "id": "i"})).as_bytes()).unwrap();
    assert_eq!(
        m.args,
        vec![
            json!("2026-11-26T10:13:06.131039+00:00"),
            json!("3.14159265358979323846")
        ]
    );
    assert_eq!(m.kwargs["u"], json!("f2b687d9-fe7d-46fc-9a40-51f8d40bb0b2"));
    assert_eq!(m.kwargs["b"], json!("hi"));
    assert_eq!(m.kwargs["raw"], json!([0, 1, 2]));
    assert_eq!(m.kwargs["nested"], json!(["2026-11-26"]));
}

#[test]
fn malformed_messages_get_typed_errors() {
    let cases: Vec<(&str, String)> = vec![
        ("not json", "garbage{".to_string()),
        ("json but not an envelope", "[1,2,3]".to_string()),
        ("bad base64", json!({"body": "!!!", "headers": {"task": "t", "id": "i"}, "properties": {"body_encoding": "base64"}}).to_string()),
        ("body not json", envelope_raw("not json at all", json!({"task": "t", "id": "i"}))),
        ("v2 body not a list", envelope(&json!({"a": 1}), json!({"task": "t", "id": "i"}))),
        ("args not a list", envelope(&json!([1, {}, null]), json!({"task": "t", "id": "i"}))),
        ("kwargs not an object", envelope(&json!([[], [], null]), json!({"task": "t", "id": "i"}))),
        ("missing id", envelope(&json!([[], {}, null]), json!({"task": "t"}))),
        ("no task anywhere", envelope(&json!({"args": []}), json!({}))),
    ];
    for (what, raw) in cases {
        match Message::decode(raw.as_bytes()) {
            Err(CodecError::Malformed(msg)) => assert!(!msg.is_empty(), "{what}"),
            other => panic!("{what}: expected Malformed, got {other:?}"),
        }
    }
}

fn envelope_raw(body: &str, headers: Value) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(body);
    json!({"body": b64, "content-type": "application/json", "headers": headers, "properties": {"body_encoding": "base64"}}).to_string()
}

#[test]
fn pickle_and_oversized_bodies_are_refused() {
    let pickle = json!({"body": "gAN9cQAu", "content-type": "application/x-python-serialize",
        "content-encoding": "binary", "headers": {"task": "t", "id": "i"}, "properties": {"body_encoding": "base64"}});
    assert!(matches!(
        Message::decode(pickle.to_string().as_bytes()),
        Err(CodecError::ContentDisallowed(ct)) if ct == "application/x-python-serialize"
    ));
    let big = envelope(
        &json!([["x".repeat(2000)], {}, null]),
        json!({"task": "t", "id": "i"}),
    );
    assert!(matches!(
        Message::decode_with_limit(big.as_bytes(), 1000),
        Err(CodecError::TooLarge { limit: 1000, .. })
    ));
    let zipped = json!({"body": "", "headers": {"task": "t", "id": "i", "compression": "application/x-gzip"}, "properties": {}});
    assert!(matches!(
        Message::decode(zipped.to_string().as_bytes()),
        Err(CodecError::UnsupportedCompression(_))
    ));
}

#[test]
fn reprs_match_python() {
    assert_eq!(args_repr(&[json!(2), json!(3)]), "(2, 3)");
    assert_eq!(args_repr(&[json!("a")]), "('a',)");
    assert_eq!(
        args_repr(&[json!(null), json!(true), json!([1, "x"])]),
        "(None, True, [1, 'x'])"
    );
    assert_eq!(
        kwargs_repr(json!({"z": 1}).as_object().unwrap()),
        "{'z': 1}"
    );
    let long = args_repr(&[json!("y".repeat(5000))]);
    assert_eq!(long.len(), 1024);
    assert!(long.ends_with("..."));
}

#[test]
fn failure_documents_have_celerys_shape() {
    let meta = ResultMeta::failure("id1", &TaskError::typed("ValueError", "builtins", "boom"));
    let v = serde_json::to_value(&meta).unwrap();
    assert_eq!(v["status"], "FAILURE");
    assert_eq!(
        v["result"],
        json!({"exc_type": "ValueError", "exc_message": ["boom"], "exc_module": "builtins"})
    );
    assert!(v["traceback"].as_str().unwrap().contains("boom"));
    assert_eq!(v["children"], json!([]));
    assert!(v["date_done"].is_string());
    assert_eq!(v["task_id"], "id1");

    // A document written by Python Celery decodes back to a typed error.
    let py: ResultMeta = serde_json::from_value(json!({
        "status": "FAILURE",
        "result": {"exc_type": "ZeroDivisionError", "exc_message": ["division by zero"], "exc_module": "builtins"},
        "traceback": "Traceback (most recent call last):\n ...\nZeroDivisionError: division by zero\n",
        "children": [], "date_done": "2026-11-26T10:12:19.712541+00:00", "task_id": "x"
    }))
    .unwrap();
    let err = py.outcome().unwrap().unwrap_err();
    assert_eq!(err.exc_type(), "ZeroDivisionError");
    assert_eq!(err.message(), "division by zero");
    assert!(err.traceback().unwrap().starts_with("Traceback"));

    let revoked = ResultMeta::failure("r", &TaskError::revoked("revoked"));
    assert_eq!(revoked.status, State::Revoked);
    let info: ExceptionInfo = serde_json::from_value(revoked.result).unwrap();
    assert_eq!(
        (info.exc_type.as_str(), info.exc_module.as_deref()),
        ("TaskRevokedError", Some("celery.exceptions"))
    );
}

#[test]
fn states_round_trip() {
    for s in [
        "PENDING", "RECEIVED", "STARTED", "SUCCESS", "FAILURE", "RETRY", "REVOKED", "PROGRESS",
    ] {
        let st: State = serde_json::from_value(json!(s)).unwrap();
        assert_eq!(serde_json::to_value(&st).unwrap(), json!(s));
    }
    let ready: Vec<&str> = ["SUCCESS", "FAILURE", "REVOKED", "RETRY", "STARTED"]
        .into_iter()
        .filter(|s| s.parse::<State>().unwrap().is_ready())
        .collect();
    assert_eq!(ready, ["SUCCESS", "FAILURE", "REVOKED"]);
}

fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,20}".prop_map(Value::String),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    json_leaf().prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,8}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #[test]
    fn encode_decode_round_trips(
        name in "[a-z][a-z0-9_.]{0,30}",
        args in prop::collection::vec(json_value(), 0..5),
        kwargs in prop::collection::btree_map("[a-z_]{1,10}", json_value(), 0..5),
        priority in 0u8..10,
        retries in 0u32..100,
        queue in "[a-z]{1,10}",
    ) {
        let kwargs: Map<String, Value> = kwargs.into_iter().collect();
        let mut m = Message::new(&name, args, kwargs);
        m.properties.priority = priority;
        m.headers.retries = retries;
        m.set_queue(&queue);
        let back = Message::decode(&m.encode().unwrap()).unwrap();
        prop_assert_eq!(back, m);
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_decoder(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = Message::decode(&bytes);
    }
}
