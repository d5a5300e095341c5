//! `#[celeriac::task]`: names, argument binding, typed errors, context,
//! registration.

use celeriac::{Args, Registry, Task, TaskContext, TaskError, TaskErrorKind, task};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

#[task(name = "tests.add")]
fn add(x: i64, y: i64) -> i64 {
    x + y
}

#[task]
fn unnamed(x: i64) -> i64 {
    x
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Point {
    x: f64,
    y: f64,
}

#[task(name = "tests.norm")]
fn norm(p: Point, scale: Option<f64>) -> f64 {
    (p.x * p.x + p.y * p.y).sqrt() * scale.unwrap_or(1.0)
}

#[task(name = "tests.parse")]
fn parse(text: String) -> Result<i64, std::num::ParseIntError> {
    text.trim().parse()
}

#[task(name = "tests.typed_error")]
fn typed_error() -> Result<(), TaskError> {
    Err(TaskError::typed("ValueError", "builtins", "bad value"))
}

#[task(name = "tests.whoami")]
fn whoami(ctx: &TaskContext, greeting: String) -> String {
    format!("{greeting} from {}", ctx.name())
}

#[task(name = "tests.unit")]
fn unit() {}

#[task(name = "tests.limited", rate_limit = "50/s", max_retries = 7)]
fn limited() {}

fn registry() -> Registry {
    Registry::linked(false).unwrap()
}

fn run(name: &str, args: Value, kwargs: Value) -> Result<Value, TaskError> {
    let reg = registry();
    let task = reg
        .get(name)
        .unwrap_or_else(|| panic!("{name} is registered"));
    let args = Args::new(
        args.as_array().unwrap().clone(),
        kwargs.as_object().unwrap().clone(),
    );
    task.invoke(&TaskContext::detached(name), args)
}

#[test]
fn functions_stay_callable_and_handles_are_typed() {
    assert_eq!(add(2, 3), 5);
    let call = add::call(2, 3);
    assert_eq!(call.name(), "tests.add");
    assert_eq!(call.args(), &[json!(2), json!(3)]);
    assert_eq!(<add as Task>::PARAMS, &["x", "y"]);
    assert_eq!(
        <whoami as Task>::PARAMS,
        &["greeting"],
        "the context is not a parameter"
    );
}

#[test]
fn default_name_is_the_module_path() {
    assert_eq!(<unnamed as Task>::name(), "task_macro.unnamed");
    assert!(registry().contains("task_macro.unnamed"));
}

#[test]
fn linked_registry_has_user_and_builtin_tasks_but_not_diagnostics() {
    let reg = registry();
    for name in [
        "tests.add",
        "celeriac.add",
        "celeriac.fib",
        "celeriac.sleep",
        "celeriac.echo",
    ] {
        assert!(reg.contains(name), "{name}");
    }
    assert!(!reg.contains("celeriac.fail"));
    let diag = Registry::linked(true).unwrap();
    for name in [
        "celeriac.fail",
        "celeriac.panic",
        "celeriac.crash",
        "celeriac.alloc",
    ] {
        assert!(diag.contains(name), "{name}");
    }
}

#[test]
fn positional_and_keyword_arguments_bind_by_position_and_name() {
    assert_eq!(
        run("tests.add", json!([2, 3]), json!({})).unwrap(),
        json!(5)
    );
    assert_eq!(
        run("tests.add", json!([2]), json!({"y": 40})).unwrap(),
        json!(42)
    );
    assert_eq!(
        run("tests.add", json!([]), json!({"y": 1, "x": 2})).unwrap(),
        json!(3)
    );
    assert_eq!(
        run("tests.norm", json!([{"x": 3.0, "y": 4.0}]), json!({})).unwrap(),
        json!(5.0),
        "an Option parameter may be omitted"
    );
    assert_eq!(
        run("tests.norm", json!([{"x": 3.0, "y": 4.0}, 2.0]), json!({})).unwrap(),
        json!(10.0)
    );
    assert_eq!(
        run("tests.unit", json!([]), json!({})).unwrap(),
        json!(null)
    );
}

#[test]
fn wrong_calls_are_typed_errors_not_panics() {
    let cases = [
        (
            json!([1, 2, 3]),
            json!({}),
            "add() takes 2 positional arguments but 3 were given",
        ),
        (
            json!([1]),
            json!({}),
            "add() missing 1 required positional argument: 'y'",
        ),
        (
            json!([1]),
            json!({"z": 2}),
            "add() got an unexpected keyword argument 'z'",
        ),
        (
            json!([1, 2]),
            json!({"x": 2}),
            "add() got multiple values for argument 'x'",
        ),
    ];
    for (args, kwargs, message) in cases {
        let err = run("tests.add", args, kwargs).unwrap_err();
        assert_eq!(err.kind(), TaskErrorKind::InvalidArguments);
        assert_eq!(err.exc_type(), "TypeError");
        assert_eq!(err.message(), message.replace("add()", "tests.add()"));
    }
    let err = run("tests.add", json!(["two", 3]), json!({})).unwrap_err();
    assert_eq!(err.kind(), TaskErrorKind::InvalidArguments);
    assert!(err.message().contains("argument 'x'"), "{}", err.message());
    assert!(
        err.message().contains("invalid type: string \"two\""),
        "{}",
        err.message()
    );
    // A `serde_json::Value` parameter is required too: a missing argument
    // is not passed as `null` (it used to reach `celeriac.add` as null).
    let err = run("celeriac.add", json!([1]), json!({})).unwrap_err();
    assert_eq!(err.kind(), TaskErrorKind::InvalidArguments);
    assert_eq!(
        err.message(),
        "celeriac.add() missing 1 required positional argument: 'y'"
    );
    // An `Option` parameter may still be omitted.
    assert_eq!(
        run("tests.norm", json!([{"x": 3.0, "y": 4.0}]), json!({})).unwrap(),
        json!(5.0)
    );
    let err = run("tests.norm", json!([{"x": 1.0}]), json!({})).unwrap_err();
    assert!(
        err.message().contains("missing field `y`"),
        "{}",
        err.message()
    );
}

#[test]
fn returned_errors_keep_their_type_and_message() {
    let err = run("tests.parse", json!(["nope"]), json!({})).unwrap_err();
    assert_eq!(err.kind(), TaskErrorKind::Failed);
    assert_eq!(err.exc_type(), "ParseIntError");
    assert_eq!(err.message(), "invalid digit found in string");
    assert_eq!(
        run("tests.parse", json!([" 12 "]), json!({})).unwrap(),
        json!(12)
    );
    let err = run("tests.typed_error", json!([]), json!({})).unwrap_err();
    assert_eq!(
        (err.exc_type(), err.exc_module(), err.message()),
        ("ValueError", Some("builtins"), "bad value")
    );
}

#[test]
fn context_parameter_sees_the_call() {
    assert_eq!(
        run("tests.whoami", json!(["hi"]), json!({})).unwrap(),
        json!("hi from tests.whoami")
    );
}

#[test]
fn explicit_registration_refuses_duplicates() {
    let mut reg = Registry::new();
    reg.register::<add>().unwrap();
    let err = reg.register::<add>().unwrap_err();
    assert!(matches!(err, celeriac::RegistryError::Duplicate(n) if n == "tests.add"));
    assert!(matches!(
        Registry::new().register_fn("has space", |_, _| Ok(json!(1))),
        Err(celeriac::RegistryError::InvalidName(_))
    ));
}

#[test]
fn attribute_options_reach_the_task_policy() {
    let opts = <limited as Task>::OPTIONS;
    assert_eq!(
        opts.rate(),
        Some(celeriac::RateLimit::per_second_global(50.0))
    );
    assert_eq!(opts.retry_limit(), Some(7));
    assert_eq!(<unit as Task>::OPTIONS, celeriac::TaskOptions::DEFAULT);
    assert!(!<unit as Task>::OPTIONS.is_cheap());
    assert!(<cheap_one as Task>::OPTIONS.is_cheap());
}

#[task(name = "tests.cheap_one", cheap)]
fn cheap_one() {}

/// What the worker's errback rule reads: the parameters of a linked task
/// (the context not among them) and whether it takes the context.
#[test]
fn the_registry_knows_each_linked_tasks_parameters_and_context() {
    let reg = registry();
    let add = reg.get("tests.add").unwrap();
    assert_eq!(add.params(), Some(&["x", "y"][..]));
    assert!(!add.takes_context());
    let whoami = reg.get("tests.whoami").unwrap();
    assert_eq!(whoami.params(), Some(&["greeting"][..]));
    assert!(whoami.takes_context());
    let log_error = reg.get("celeriac.log_error").unwrap();
    assert_eq!(
        log_error.params(),
        Some(&["request", "exc", "traceback"][..])
    );
    assert!(reg.get("celeriac.add").unwrap().options().is_cheap());
}
