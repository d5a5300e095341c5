//! The properties the fuzz targets (`fuzz/`) check, as proptest
//! properties in the normal suite, on messages as foreign producers write
//! them (protocol v1 and v2, base64, plain and inline bodies, kombu tags):
//!
//! - what decodes re-encodes, and decodes to the same message (a retry or
//!   a requeue that publishes a decoded message again never changes it);
//! - kombu tags are decoded innermost first, once and for all;
//! - a signed message verifies after the trip through the wire, and fails
//!   once its name or arguments change.
//!
//! Plus the regressions the fuzzers found, as plain tests.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use celeriac_core::message::decode_kombu_tags;
use celeriac_core::{Message, Secret, SignatureError};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        "\\PC{0,12}".prop_map(Value::String),
    ]
}

/// kombu tags, decodable or not.
fn tag(inner: impl Strategy<Value = Value> + Clone) -> impl Strategy<Value = Value> {
    let ty = prop_oneof![
        Just("datetime"),
        Just("date"),
        Just("decimal"),
        Just("bytes"),
        Just("uuid"),
        Just("base64"),
        Just("set"),
    ];
    prop_oneof![
        (ty.clone(), inner).prop_map(|(t, v)| json!({"__type__": t, "__value__": v})),
        any::<u128>().prop_map(|u| {
            json!({"__type__": "uuid", "__value__": {"hex": format!("{u:032x}")}})
        }),
        prop::collection::vec(any::<u8>(), 0..8)
            .prop_map(|b| json!({"__type__": "base64", "__value__": B64.encode(b)})),
        (ty, "[0-9:TZ-]{0,10}").prop_map(|(t, s)| json!({"__type__": t, "__value__": s})),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(3, 32, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,8}", inner.clone(), 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            tag(inner.clone()),
            // A tag whose type is itself a tag.
            inner.prop_map(|v| json!({
                "__type__": {"__type__": "bytes", "__value__": "datetime"},
                "__value__": v,
            })),
        ]
    })
}

/// How a producer may carry the body.
#[derive(Debug, Clone, Copy)]
enum BodyForm {
    Base64,
    Plain,
    PlainNamedUtf8,
    Inline,
}

fn body_form() -> impl Strategy<Value = BodyForm> {
    prop_oneof![
        Just(BodyForm::Base64),
        Just(BodyForm::Plain),
        Just(BodyForm::PlainNamedUtf8),
        Just(BodyForm::Inline),
    ]
}

/// An envelope as a foreign producer writes it.
fn envelope(
    v1: bool,
    form: BodyForm,
    name: &str,
    args: Vec<Value>,
    kwargs: Map<String, Value>,
    retries: u32,
) -> Vec<u8> {
    let (headers, body) = if v1 {
        let body = json!({"task": name, "id": "id-1", "args": args, "kwargs": kwargs,
            "retries": retries, "eta": null, "taskset": "g-1"});
        (json!({}), body)
    } else {
        let headers = json!({"task": name, "id": "id-1", "retries": retries, "lang": "py"});
        (
            headers,
            json!([args, kwargs, {"callbacks": null, "chain": null}]),
        )
    };
    let text = serde_json::to_string(&body).unwrap();
    let (body, encoding) = match form {
        BodyForm::Base64 => (json!(B64.encode(&text)), Some("base64")),
        BodyForm::Plain => (json!(text), None),
        BodyForm::PlainNamedUtf8 => (json!(text), Some("utf-8")),
        BodyForm::Inline => (body, None),
    };
    let mut properties = json!({"delivery_tag": "t-1", "delivery_info": {"routing_key": "q"}});
    if let Some(e) = encoding {
        properties["body_encoding"] = json!(e);
    }
    serde_json::to_vec(&json!({
        "body": body,
        "content-type": "application/json",
        "content-encoding": "utf-8",
        "headers": headers,
        "properties": properties,
    }))
    .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn what_decodes_re_encodes_to_the_same_message_and_signs(
        v1 in any::<bool>(),
        form in body_form(),
        name in "[a-z][a-z0-9_.]{0,20}",
        args in prop::collection::vec(value(), 0..4),
        kwargs in prop::collection::btree_map("[a-z_]{1,8}", value(), 0..4),
        retries in 0u32..50,
    ) {
        let wire = envelope(v1, form, &name, args, kwargs.into_iter().collect(), retries);
        let m = Message::decode(&wire).unwrap();
        prop_assert_eq!(m.task(), name.as_str());
        prop_assert_eq!(m.headers.retries, retries);
        let again = m.encode().unwrap();
        let back = Message::decode(&again).unwrap();
        prop_assert_eq!(&back, &m);

        let secret = Secret::new("k").unwrap();
        prop_assert_eq!(secret.verify(&m, &wire), Err(SignatureError::Missing));
        let mut signed = m.clone();
        secret.sign(&mut signed).unwrap();
        let signed_wire = signed.encode().unwrap();
        let received = Message::decode(&signed_wire).unwrap();
        prop_assert_eq!(secret.verify(&received, &signed_wire), Ok(()));
    }

    #[test]
    fn kombu_tags_are_decoded_once_and_for_all(v in value()) {
        let once = decode_kombu_tags(v);
        prop_assert_eq!(decode_kombu_tags(once.clone()), once);
    }

    #[test]
    fn a_signed_message_with_another_name_or_argument_does_not_verify(
        args in prop::collection::vec(leaf(), 1..4),
        pick in any::<prop::sample::Index>(),
        other in leaf(),
        rename in any::<bool>(),
    ) {
        let secret = Secret::new("k").unwrap();
        let mut m = Message::new("t.signed", args, Map::new());
        secret.sign(&mut m).unwrap();
        let mut forged = m.clone();
        if rename {
            forged.headers.task = "t.other".into();
        } else {
            let i = pick.index(forged.args.len());
            prop_assume!(forged.args[i] != other);
            forged.args[i] = other;
        }
        let wire = forged.encode().unwrap();
        let got = Message::decode(&wire).unwrap();
        prop_assert_eq!(secret.verify(&got, &wire), Err(SignatureError::Mismatch));
    }

    #[test]
    fn arbitrary_envelopes_never_panic_the_decoder_or_the_verifier(
        body in prop_oneof![value(), "\\PC{0,40}".prop_map(Value::String)],
        headers in prop::collection::btree_map(
            prop_oneof![Just("task".to_string()), Just("id".to_string()),
                Just("celeriac_signature".to_string()), "[a-z_]{1,8}"],
            value(), 0..5),
        encoding in prop_oneof![Just(json!("base64")), Just(json!(null)), value()],
        limit in 0usize..256,
    ) {
        let wire = serde_json::to_vec(&json!({
            "body": body,
            "headers": headers,
            "properties": {"body_encoding": encoding},
        }))
        .unwrap();
        if let Ok(m) = Message::decode_with_limit(&wire, limit) {
            let _ = Secret::new("k").unwrap().verify(&m, &wire);
            // A message with an integer outside 64 bits is dead-lettered,
            // never republished: it need not survive a round trip.
            if m.out_of_range_integer().is_none() {
                let back = Message::decode(&m.encode().unwrap()).unwrap();
                prop_assert_eq!(back, m);
            }
        }
    }
}

/// Found by `fuzz/message_body`: a body that is not base64 but names its
/// encoding (`"utf-8"`) decoded, then re-encoded in base64 under the same
/// `body_encoding`, so its retry or requeue was undecodable.
#[test]
fn a_message_whose_body_encoding_is_not_base64_stays_decodable_when_published_again() {
    let wire = envelope(
        false,
        BodyForm::PlainNamedUtf8,
        "t.plain",
        vec![json!(1)],
        Map::new(),
        0,
    );
    let m = Message::decode(&wire).unwrap();
    let again = Message::decode(&m.encode().unwrap()).unwrap();
    assert_eq!(again.args, vec![json!(1)]);
    assert_eq!(again, m);
    assert_eq!(m.properties.body_encoding, "base64");
}

/// kombu's `object_hook` decodes innermost first: a tag whose parts are
/// tags is decoded in the same pass, and a second pass changes nothing.
#[test]
fn a_tag_made_of_tags_is_decoded_innermost_first() {
    let v = json!({
        "__type__": {"__type__": "bytes", "__value__": "datetime"},
        "__value__": "2026-01-01T00:00:00",
    });
    assert_eq!(decode_kombu_tags(v), json!("2026-01-01T00:00:00"));
    let v =
        json!([{"__type__": "decimal", "__value__": {"__type__": "bytes", "__value__": "1.5"}}]);
    assert_eq!(decode_kombu_tags(v), json!(["1.5"]));
}

/// Found reviewing the fuzz targets: the body limit was checked only for
/// string bodies, so an inline JSON body of any size was accepted.
#[test]
fn an_inline_body_over_the_limit_is_refused_too() {
    let big = vec![json!("x".repeat(1000))];
    let wire = envelope(false, BodyForm::Inline, "t.big", big, Map::new(), 0);
    match Message::decode_with_limit(&wire, 500) {
        Err(celeriac_core::CodecError::TooLarge { size, limit }) => {
            assert!(size > 1000, "{size}");
            assert_eq!(limit, 500);
        }
        other => panic!("{other:?}"),
    }
    let small = envelope(
        false,
        BodyForm::Inline,
        "t.small",
        vec![json!(1)],
        Map::new(),
        0,
    );
    assert!(Message::decode_with_limit(&small, small.len() - 1).is_ok());
    assert!(Message::decode_with_limit(&wire, wire.len()).is_ok());
}
