//! The dashboard against real workers on a private Redis: a celeriac
//! worker and a Python Celery worker through the JSON API (with its
//! actions), the token and CSRF rules and the refusal to serve a public
//! address without a token, and the page in headless Chromium (Debian's
//! `chromium` and `chromium-driver`, driven over WebDriver by fantoccini):
//! the worker appears, counts and the chart move, a failed task's
//! traceback opens, a dead letter is requeued by a click, and a
//! screenshot is saved.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use celeriac::canvas::{PlanContext, chain};
use celeriac::{Broker, Call, Outgoing, Registry, TaskError, Worker};
use celeriac_dashboard::{Dashboard, DashboardArgs, DashboardError};
use celeriac_testkit::python::{CeleryWorker, interop_python};
use celeriac_testkit::redis_server::RedisServer;
use celeriac_testkit::send_calls;
use serde_json::{Value, json};
use tokio::sync::oneshot;

const TOKEN: &str = "t0k-for-tests";

fn registry() -> Registry {
    let mut r = Registry::new();
    r.register_fn("t.add", |_, args| {
        let mut b = args.bind("add", &["x", "y"])?;
        Ok(json!(b.take::<i64>(0)? + b.take::<i64>(1)?))
    })
    .unwrap();
    r.register_fn("t.boom", |_, _| {
        Err(TaskError::typed(
            "ValueError",
            "builtins",
            "boom from the test",
        ))
    })
    .unwrap();
    r
}

/// A celeriac worker in this process, consuming `queue`, with events.
fn worker(broker: &Arc<dyn Broker>, url: &str, node: &str, queue: &str) -> Worker {
    let backend = celeriac::open_backend(url).unwrap();
    let w = Worker::builder(broker.clone(), backend, Arc::new(registry()))
        .concurrency(2)
        .nodename(node)
        .queues(vec![queue.to_string()])
        .heartbeat(Duration::from_millis(500))
        .events(true)
        .build()
        .unwrap();
    tokio::spawn({
        let w = w.clone();
        async move { w.run().await }
    });
    w
}

/// A served dashboard: its address, and what stops it.
struct Served {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<Result<(), DashboardError>>,
}

impl Served {
    async fn start(broker: Arc<dyn Broker>, token: Option<&str>) -> Served {
        let dash = Dashboard::builder(broker)
            .max_tasks(500)
            .token(token.map(str::to_string))
            .build()
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let done = tokio::spawn(dash.serve(listener, async {
            let _ = rx.await;
        }));
        Served {
            addr,
            stop: Some(tx),
            done,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(10), self.done)
            .await
            .expect("the dashboard stops")
            .unwrap()
            .unwrap();
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

async fn get_json(s: &Served, path: &str) -> Value {
    let r = http()
        .get(s.url(path))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{path}");
    r.json().await.unwrap()
}

async fn post_json(s: &Served, path: &str, body: Value) -> (u16, Value) {
    let r = http()
        .post(s.url(path))
        .bearer_auth(TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// Polls `path` until `ok` holds for its JSON (or 60 s, a hang guard).
async fn until(s: &Served, path: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let v = get_json(s, path).await;
        if ok(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "{path} never held; last: {v:#}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn find<'a>(list: &'a Value, key: &str, value: &str) -> Option<&'a Value> {
    list.as_array()?.iter().find(|v| v[key] == value)
}

/// Sets a message aside in the dead-letter store, as a worker does with
/// one it cannot run: published to `queue`, claimed, dead-lettered.
async fn dead_letter(broker: &Arc<dyn Broker>, queue: &str) -> String {
    let m = Call::<Value>::new("t.parked")
        .arg(1)
        .queue(queue)
        .to_message()
        .unwrap();
    broker
        .publish(Outgoing::from_message(&m).unwrap())
        .await
        .unwrap();
    let got = broker
        .claim("test", &[queue.to_string()], 1, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    broker
        .dead_letter(&got[0], "parked by the test")
        .await
        .unwrap();
    m.id().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_shows_a_celeriac_and_a_python_worker_and_acts_on_them() {
    let python = interop_python();
    let redis = RedisServer::start();
    let url = redis.url("");
    let broker = celeriac::open_broker(&url).unwrap();
    let served = Served::start(broker.clone(), Some(TOKEN)).await;
    let rs = worker(&broker, &url, "rs@dash", "rsq");
    let dir = tempfile::tempdir().unwrap();
    let _py = python.as_ref().map(|python| {
        CeleryWorker::new(python, "pytasks")
            .node("py@dash")
            .args(["-Q", "pyq"])
            .broker(&url)
            .start(dir.path(), "python-dashboard-worker")
    });

    // Both workers appear by node name, with their pool from `stats` and
    // their queues from `active_queues`.
    let want_py = python.is_some();
    let workers = until(&served, "/api/workers", |w| {
        find(w, "hostname", "rs@dash").is_some_and(|r| r["online"] == true && r["concurrency"] == 2)
            && (!want_py
                || find(w, "hostname", "py@dash")
                    .is_some_and(|p| p["online"] == true && p["concurrency"] == 1))
    })
    .await;
    let r = find(&workers, "hostname", "rs@dash").unwrap();
    assert_eq!(r["queues"], json!(["rsq"]), "{r}");
    assert!(
        r["software"].as_str().unwrap().starts_with("celeriac"),
        "{r}"
    );
    if want_py {
        let p = find(&workers, "hostname", "py@dash").unwrap();
        assert!(
            p["software"].as_str().unwrap().starts_with("py-celery"),
            "{p}"
        );
        assert!(p["pool"].as_str().unwrap().contains("solo"), "{p}");
        assert_eq!(p["queues"], json!(["pyq"]), "{p}");
    }

    // Tasks on both, from events: names, states, a traceback.
    let mut calls = vec![
        Call::<Value>::new("t.add").arg(2).arg(3).queue("rsq"),
        Call::<Value>::new("t.boom").queue("rsq"),
    ];
    if want_py {
        calls.push(Call::<Value>::new("tasks.add").arg(4).arg(5).queue("pyq"));
        calls.push(
            Call::<Value>::new("tasks.boom")
                .arg("from python")
                .queue("pyq"),
        );
    }
    let ids = send_calls(&*broker, calls).await;
    let tasks = until(&served, "/api/tasks?limit=50", |t| {
        ids.iter().all(|id| {
            find(t, "id", id).is_some_and(|t| t["state"] == "SUCCESS" || t["state"] == "FAILURE")
        })
    })
    .await;
    let ok = find(&tasks, "id", &ids[0]).unwrap();
    assert_eq!(
        (&ok["name"], &ok["state"], &ok["outcome"]),
        (&json!("t.add"), &json!("SUCCESS"), &json!("5"))
    );
    assert!(ok["runtime"].as_f64().is_some(), "{ok}");
    let failed = find(&tasks, "id", &ids[1]).unwrap();
    assert_eq!(failed["state"], "FAILURE", "{failed}");
    let detail = get_json(&served, &format!("/api/tasks/{}", ids[1])).await;
    assert!(
        detail["traceback"]
            .as_str()
            .unwrap()
            .contains("boom from the test"),
        "{detail}"
    );
    let only_failed = get_json(&served, "/api/tasks?state=FAILURE&name=boom").await;
    assert!(
        only_failed
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["state"] == "FAILURE")
    );
    assert!(find(&only_failed, "id", &ids[1]).is_some(), "{only_failed}");
    if want_py {
        let py_ok = find(&tasks, "id", &ids[2]).unwrap();
        assert_eq!(
            (&py_ok["name"], &py_ok["state"]),
            (&json!("tasks.add"), &json!("SUCCESS")),
            "{py_ok}"
        );
        let py_bad = get_json(&served, &format!("/api/tasks/{}", ids[3])).await;
        assert_eq!(py_bad["state"], "FAILURE", "{py_bad}");
        let tb = py_bad["traceback"].as_str().unwrap();
        assert!(
            tb.contains("Traceback") && tb.contains("ValueError: from python"),
            "{tb}"
        );
    }
    // A chain, as Celery's client sends it: each step's detail names its
    // parent and its children (the next step, sent by the worker).
    let route = |_: &str| Some("rsq".to_string());
    let plan = chain(Call::<i64>::new("t.add").arg(1).arg(2))
        .then(Call::<i64>::new("t.add").arg(10).partial())
        .then(Call::<i64>::new("t.add").arg(100).partial())
        .plan(&PlanContext::new("dashboard-test").route(&route))
        .unwrap();
    let first = plan.messages().next().unwrap().id().to_string();
    let last = plan.result.id().to_string();
    let middle = plan.result.parent().unwrap().id().to_string();
    for m in plan.messages() {
        broker
            .publish(Outgoing::from_message(m).unwrap())
            .await
            .unwrap();
    }
    until(&served, "/api/tasks?limit=50", |t| {
        find(t, "id", &last).is_some_and(|t| t["state"] == "SUCCESS")
    })
    .await;
    let step = get_json(&served, &format!("/api/tasks/{middle}")).await;
    assert_eq!(
        (&step["parent_id"], &step["root_id"], &step["outcome"]),
        (&json!(first), &json!(first), &json!("13")),
        "{step}"
    );
    assert_eq!(
        (
            &step["parent"]["id"],
            &step["parent"]["name"],
            &step["parent"]["state"]
        ),
        (&json!(first), &json!("t.add"), &json!("SUCCESS")),
        "{step}"
    );
    assert_eq!(
        step["children"],
        json!([{"id": last, "name": "t.add", "state": "SUCCESS"}]),
        "{step}"
    );
    let head = get_json(&served, &format!("/api/tasks/{first}")).await;
    assert_eq!(head["parent"], Value::Null, "{head}");
    assert_eq!(
        head["children"].as_array().map(|c| c.len()),
        Some(1),
        "{head}"
    );
    assert_eq!(head["children"][0]["id"], json!(middle), "{head}");
    let tail = get_json(&served, &format!("/api/tasks/{last}")).await;
    assert_eq!(
        (&tail["parent"]["id"], &tail["outcome"], &tail["children"]),
        (&json!(middle), &json!("113"), &json!([])),
        "{tail}"
    );

    let summary = get_json(&served, "/api/summary").await;
    assert_eq!(summary["max_tasks"], 500);
    assert!(
        summary["counts"]["SUCCESS"].as_u64() >= Some(1),
        "{summary}"
    );

    // Queues: depth in all and per priority (tasks due in five minutes
    // wait on their queue; priority 7 in kombu's list for 6-8) and
    // consumers.
    let later = send_calls(
        &*broker,
        [0, 7, 7]
            .into_iter()
            .map(|p| {
                Call::<Value>::new("t.add")
                    .arg(1)
                    .arg(1)
                    .queue("rsq")
                    .priority(p)
                    .countdown(Duration::from_secs(300))
            })
            .collect(),
    )
    .await;
    let queues = until(&served, "/api/queues", |q| {
        find(q, "name", "rsq")
            .is_some_and(|q| q["depth"] == 3 && q["consumers"] == json!(["rs@dash"]))
    })
    .await;
    assert_eq!(
        find(&queues, "name", "rsq").unwrap()["priorities"],
        json!([{"priority": 0, "depth": 1}, {"priority": 6, "depth": 2}]),
        "{queues}"
    );
    if want_py {
        assert_eq!(
            find(&queues, "name", "pyq").unwrap()["consumers"],
            json!(["py@dash"]),
            "{queues}"
        );
    }

    // Actions: pool grow and shrink, a rate limit, a revoke.
    let (code, body) = post_json(&served, "/api/workers/rs@dash/pool", json!({"grow": 1})).await;
    assert_eq!(code, 200, "{body}");
    assert!(body["replies"]["rs@dash"]["ok"].is_string(), "{body}");
    until(&served, "/api/workers", |w| {
        find(w, "hostname", "rs@dash").is_some_and(|r| r["concurrency"] == 3)
    })
    .await;
    let (code, body) = post_json(&served, "/api/workers/rs@dash/pool", json!({"shrink": 2})).await;
    assert_eq!(code, 200, "{body}");
    assert!(body["replies"]["rs@dash"]["ok"].is_string(), "{body}");
    until(&served, "/api/workers", |w| {
        find(w, "hostname", "rs@dash").is_some_and(|r| r["concurrency"] == 1)
    })
    .await;
    let (code, body) = post_json(&served, "/api/workers/rs@dash/pool", json!({})).await;
    assert_eq!(code, 422, "{body}");
    let (code, body) = post_json(
        &served,
        "/api/workers/rs@dash/pool",
        json!({"grow": 1, "shrink": 1}),
    )
    .await;
    assert_eq!(code, 422, "{body}");
    let (code, body) = post_json(
        &served,
        "/api/rate_limit",
        json!({"task_name": "t.add", "rate_limit": "10/s", "destination": "rs@dash"}),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert!(body["replies"]["rs@dash"]["ok"].is_string(), "{body}");
    let (code, body) = post_json(
        &served,
        &format!("/api/tasks/{}/revoke", later[0]),
        json!({}),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(broker.revoked(&later[..1]).await.unwrap(), later[..1]);
    assert!(broker.terminations(&later[..1]).await.unwrap().is_empty());
    let (code, body) = post_json(
        &served,
        &format!("/api/tasks/{}/revoke", ids[0]),
        json!({"terminate": true, "signal": "KILL"}),
    )
    .await;
    assert_eq!((code, &body["terminate"]), (200, &json!(true)), "{body}");
    assert_eq!(broker.terminations(&ids[..1]).await.unwrap(), ids[..1]);

    // Dead letters: listed, and requeued onto their queue.
    let parked = dead_letter(&broker, "parked").await;
    let dlq = get_json(&served, "/api/dlq").await;
    let d = find(&dlq, "task_id", &parked).expect("the dead letter is listed");
    assert_eq!(
        (&d["queue"], &d["task"], &d["reason"]),
        (
            &json!("parked"),
            &json!("t.parked"),
            &json!("parked by the test")
        )
    );
    let (code, _) = post_json(
        &served,
        &format!("/api/dlq/{}/requeue", d["id"].as_str().unwrap()),
        json!({}),
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(broker.queue_len("parked").await.unwrap(), 1);
    assert!(
        get_json(&served, "/api/dlq")
            .await
            .as_array()
            .unwrap()
            .is_empty()
    );
    let (code, _) = post_json(&served, "/api/dlq/no-such-id/requeue", json!({})).await;
    assert_eq!(code, 404);

    rs.shutdown();
    served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_is_required_everywhere_and_actions_need_the_csrf_token() {
    let redis = RedisServer::start();
    let broker = celeriac::open_broker(&redis.url("")).unwrap();
    let served = Served::start(broker, Some(TOKEN)).await;
    let c = http();
    for path in [
        "/",
        "/api/workers",
        "/api/tasks",
        "/api/queues",
        "/api/dlq",
        "/static/app.js",
    ] {
        let r = c.get(served.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 401, "{path} without a token");
        let r = c
            .get(served.url(path))
            .bearer_auth("wrong")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{path} with a wrong token");
        let r = c
            .get(served.url(path))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path} with the token");
    }
    let r = c
        .post(served.url("/api/dlq/x/requeue"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "an action without a token");

    // The login form sets a cookie that is not the token.
    let r = c
        .post(served.url("/login"))
        .form(&[("token", "wrong")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = c
        .post(served.url("/login"))
        .form(&[("token", TOKEN)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        cookie.contains("HttpOnly")
            && cookie.contains("SameSite=Strict")
            && !cookie.contains(TOKEN),
        "{cookie}"
    );
    let cookie = cookie.split(';').next().unwrap().to_string();
    let page = c
        .get(served.url("/"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    let csrf = html
        .split(r#"name="csrf-token" content=""#)
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap()
        .to_string();
    assert_eq!(csrf.len(), 64, "{csrf}");
    // With the cookie, an action needs the CSRF token too.
    let r = c
        .post(served.url("/api/dlq/x/requeue"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "no CSRF token");
    let r = c
        .post(served.url("/api/dlq/x/requeue"))
        .header("cookie", &cookie)
        .header("x-csrf-token", "f".repeat(64))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "a wrong CSRF token");
    let r = c
        .post(served.url("/api/dlq/x/requeue"))
        .header("cookie", &cookie)
        .header("x-csrf-token", &csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "past the guard: no such dead letter");
    served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guessing_the_token_is_refused_after_ten_wrong_tries() {
    let redis = RedisServer::start();
    let broker = celeriac::open_broker(&redis.url("")).unwrap();
    let served = Served::start(broker, Some(TOKEN)).await;
    let c = http();
    // A browser without credentials is not guessing: no lockout from it.
    for _ in 0..20 {
        let r = c.get(served.url("/api/workers")).send().await.unwrap();
        assert_eq!(r.status(), 401);
    }
    let r = c
        .get(served.url("/api/workers"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "plain 401s do not lock an address out");
    // Ten wrong tokens, by the form and by the header, each a 401.
    for i in 0..10 {
        let r = if i % 2 == 0 {
            c.post(served.url("/login"))
                .form(&[("token", format!("guess-{i}"))])
                .send()
                .await
                .unwrap()
        } else {
            c.get(served.url("/api/workers"))
                .bearer_auth(format!("guess-{i}"))
                .send()
                .await
                .unwrap()
        };
        assert_eq!(r.status(), 401, "guess {i}");
    }
    // Then even the right token is refused, with the time to wait.
    for r in [
        c.get(served.url("/api/workers"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap(),
        c.post(served.url("/login"))
            .form(&[("token", TOKEN)])
            .send()
            .await
            .unwrap(),
    ] {
        assert_eq!(r.status(), 429);
        let wait: u64 = r.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=60).contains(&wait), "{wait}");
    }
    served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_public_address_is_refused_without_a_token() {
    let redis = RedisServer::start();
    let url = redis.url("");
    let broker = celeriac::open_broker(&url).unwrap();
    // The library: a listener on every interface, no token.
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let refused = Dashboard::builder(broker.clone())
        .build()
        .unwrap()
        .serve(listener, async {})
        .await;
    assert!(
        matches!(refused, Err(DashboardError::PublicWithoutToken(_))),
        "{refused:?}"
    );
    // The command's glue, before it binds anything.
    let args = |extra: &[&str]| {
        use clap::Parser;
        #[derive(Parser)]
        struct Cmd {
            #[command(flatten)]
            args: DashboardArgs,
        }
        let mut argv = vec!["dashboard"];
        argv.extend_from_slice(extra);
        Cmd::parse_from(argv).args
    };
    let err = celeriac_dashboard::run(args(&["--bind", "0.0.0.0:0"]), &url, None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("--insecure-no-auth"), "{err}");
    let err = celeriac_dashboard::run(args(&["--bind", "127.0.0.1:0"]), "memory://", None)
        .await
        .unwrap_err();
    assert!(matches!(err, DashboardError::Open { .. }), "{err}");
    // With a token, or told so, it serves.
    for b in [
        Dashboard::builder(broker.clone()).token(Some(TOKEN.into())),
        Dashboard::builder(broker.clone()).insecure_no_auth(true),
    ] {
        let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
        let served = b.build().unwrap().serve(listener, async {}).await;
        assert!(served.is_ok(), "{served:?}");
    }
    // Without a token on loopback, a page naming another host (DNS
    // rebinding) is refused.
    let served = Served::start(broker, None).await;
    let r = http().get(served.url("/api/workers")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = http()
        .get(served.url("/api/workers"))
        .header("host", "evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    served.stop().await;
}

/// chromedriver on a free port, killed on drop.
struct Driver(std::process::Child, u16);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn chromedriver() -> Option<Driver> {
    let found = Command::new("chromedriver")
        .arg("--version")
        .output()
        .is_ok()
        && Command::new("chromium").arg("--version").output().is_ok();
    if !found {
        assert!(
            std::env::var("CELERIAC_REQUIRE_INTEROP").as_deref() != Ok("1"),
            "chromium and chromedriver are missing (scripts/test.sh installs chromium and chromium-driver)"
        );
        eprintln!("skipped: no chromium/chromedriver (apt-get install chromium chromium-driver)");
        return None;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "chromedriver did not listen");
        std::thread::sleep(Duration::from_millis(100));
    }
    Some(Driver(child, port))
}

/// Evaluates `expr` in the page until it is truthy (or 30 s).
async fn wait_js(b: &fantoccini::Client, what: &str, expr: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = b
            .execute(&format!("return ({expr});"), vec![])
            .await
            .unwrap();
        if !(v.is_null() || v == false || v == 0 || v == "") {
            return v;
        }
        if Instant::now() > deadline {
            let text = b
                .execute("return document.body.innerText", vec![])
                .await
                .unwrap_or_default();
            panic!("the page never showed {what} ({expr}); it shows:\n{text}");
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_sees_the_worker_tasks_and_chart_and_requeues_a_dead_letter() {
    let Some(driver) = chromedriver() else { return };
    let redis = RedisServer::start();
    let url = redis.url("");
    let broker = celeriac::open_broker(&url).unwrap();
    let served = Served::start(broker.clone(), Some(TOKEN)).await;

    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1500"],
        }),
    );
    let b =
        fantoccini::ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{}", driver.1))
            .await
            .expect("a chromium session");

    // Logged out: the login form, then the page.
    b.goto(&served.url("/")).await.unwrap();
    let form = b.form(fantoccini::Locator::Css("form")).await.unwrap();
    form.set_by_name("token", TOKEN).await.unwrap();
    form.submit().await.unwrap();
    wait_js(
        &b,
        "the page",
        "document.querySelector('#workers') !== null",
    )
    .await;

    // The worker appears.
    let rs = worker(&broker, &url, "browser@dash", "celery");
    wait_js(
        &b,
        "the worker online",
        r#"(document.querySelector('#workers tr[data-node="browser@dash"] .status') || {}).textContent === 'online'"#,
    )
    .await;

    // Tasks: the counts and the chart move.
    let mut calls: Vec<Call<Value>> = (0..20).map(|i| Call::new("t.add").arg(i).arg(1)).collect();
    calls.push(Call::new("t.boom"));
    let ids = send_calls(&*broker, calls).await;
    let boom = ids.last().unwrap().clone();
    wait_js(
        &b,
        "20 successes",
        "Number(document.querySelector('#count-SUCCESS b').textContent) >= 20",
    )
    .await;
    wait_js(
        &b,
        "a failure",
        "Number(document.querySelector('#count-FAILURE b').textContent) >= 1",
    )
    .await;
    let peak = wait_js(
        &b,
        "the chart move",
        "Math.max(0, ...window.dashboard.rate.data[1].filter(v => v !== null))",
    )
    .await;
    assert!(peak.as_f64().unwrap() >= 1.0, "{peak}");

    // The failed task's traceback.
    let row = format!(r#"#tasks tr[data-id="{boom}"]"#);
    wait_js(
        &b,
        "the failed task",
        &format!("document.querySelector('{row}') !== null"),
    )
    .await;
    b.find(fantoccini::Locator::Css(&row))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let tb = wait_js(
        &b,
        "the traceback",
        "document.querySelector('#detail-traceback').textContent",
    )
    .await;
    assert!(tb.as_str().unwrap().contains("boom from the test"), "{tb}");

    // A dead letter, requeued by a click.
    let parked = dead_letter(&broker, "parked").await;
    let button = r#"#dlq button.requeue"#;
    wait_js(
        &b,
        "the dead letter",
        &format!("document.querySelector('{button}') !== null"),
    )
    .await;
    let listed = b
        .find(fantoccini::Locator::Css("#dlq tbody"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(listed.contains(&parked), "{listed}");
    b.find(fantoccini::Locator::Css(button))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_js(
        &b,
        "the dead letters gone",
        "document.querySelectorAll('#dlq tbody tr').length === 0",
    )
    .await;
    assert_eq!(broker.queue_len("parked").await.unwrap(), 1);
    wait_js(
        &b,
        "the requeued message on its queue",
        r#"(document.querySelector('#queues tr[data-queue="parked"] td:nth-child(2)') || {}).textContent === '1'"#,
    )
    .await;
    wait_js(
        &b,
        "the requeued message's priority",
        r#"(document.querySelector('#queues tr[data-queue="parked"] td:nth-child(3)') || {}).textContent === '0: 1'"#,
    )
    .await;

    // The worker's pool, from its `stats` reply.
    wait_js(
        &b,
        "the worker's concurrency",
        r#"(document.querySelector('#workers tr[data-node="browser@dash"] td:nth-child(5)') || {}).textContent === '2'"#,
    )
    .await;

    // The screenshot, as an artifact.
    b.execute(
        "document.querySelector('#detail').scrollIntoView(); window.scrollTo(0, 0)",
        vec![],
    )
    .await
    .unwrap();
    let png = b.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    std::fs::write(&out, &png).unwrap();
    eprintln!("screenshot: {}", out.display());
    if let Ok(p) = std::env::var("CELERIAC_DASHBOARD_SCREENSHOT") {
        std::fs::write(p, &png).unwrap();
    }
    b.close().await.unwrap();
    rs.shutdown();
    served.stop().await;
}
