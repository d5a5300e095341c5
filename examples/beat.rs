//! Periodic tasks with leader election (`celeriac beat`, here through its
//! builder API): two beats on one schedule and one broker, as on two nodes.
//! One leads and publishes each slot once; the other stands by. When the
//! leader stops, the standby takes over and goes on from the last recorded
//! run, so no slot runs twice. A worker runs the ticks.
//! Run: `cargo run -p celeriac-examples --example beat`.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use celeriac::{Registry, Worker, open_backend, open_broker};
use celeriac_beat::{Beat, CatchUp, Entry, Schedule};
use serde_json::json;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // The default broker is a SQLite file that processes share; here a
    // fresh one. A redis:// URL works the same way.
    let dir = std::env::temp_dir().join(format!("celeriac-beat-example-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let url = format!("sqlite://{}/beat.db", dir.display());

    // The schedule file's format, and an entry built in Rust.
    let mut schedule = Schedule::from_toml(
        r#"
        [[entry]]
        name = "tick"
        task = "demo.tick"
        args = ["every half second"]
        every = "500ms"
        catch_up = "all"
        "#,
    )?;
    schedule.push(
        Entry::cron(
            "nightly",
            "30 2 * * *",
            celeriac::Call::<()>::new("demo.report"),
        )?
        .timezone("Europe/Berlin")?,
    )?;
    print!("{}", celeriac_beat::cli::list(&schedule, 2, now_ms()));

    // A worker that remembers which ticks it ran.
    let ran = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut registry = Registry::new();
    let seen = ran.clone();
    registry.register_fn("demo.tick", move |ctx, _| {
        seen.lock().unwrap().push(ctx.id().to_string());
        Ok(json!(null))
    })?;
    let worker = Worker::builder(open_broker(&url)?, open_backend(&url)?, Arc::new(registry))
        .concurrency(2)
        .build()?;
    let running = tokio::spawn({
        let w = worker.clone();
        async move { w.run().await }
    });

    let make = || {
        Beat::builder()
            .broker(url.clone())
            .schedule(schedule.clone())
            .lock_ttl(Duration::from_secs(1))
            .catch_up(CatchUp::One)
            .build()
    };
    let a = make()?.spawn();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let b = make()?.spawn();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (leader, standby) = if a.is_leader() { (a, b) } else { (b, a) };
    println!(
        "leader (fencing token {:?}) published {}; standby published {}",
        leader.fencing_token(),
        leader.published(),
        standby.published()
    );
    let first = leader.published();
    leader.stop().await; // gives the lease up: the standby takes over at once
    tokio::time::sleep(Duration::from_secs(2)).await;
    println!(
        "after the leader stopped, the standby leads (token {:?}) and published {}",
        standby.fencing_token(),
        standby.published()
    );
    let total = first + standby.published();
    standby.stop().await;

    // Every published tick runs, once.
    for _ in 0..100 {
        if ran.lock().unwrap().len() as u64 >= total {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    worker.shutdown();
    running.await?;
    let ran = ran.lock().unwrap();
    let distinct: HashSet<&String> = ran.iter().collect();
    println!("{} ticks published, {} run", total, ran.len());
    assert_eq!(ran.len() as u64, total, "each published tick ran");
    assert_eq!(distinct.len(), ran.len(), "no tick ran twice");
    assert!(total >= 6, "4 s of a 500 ms schedule");
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

fn now_ms() -> i64 {
    (celeriac::time::unix_now() * 1000.0) as i64
}
