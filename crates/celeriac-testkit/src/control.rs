//! The remote-control part of the broker contract ([`Control`]): requests
//! reach every listener, replies reach the asking client only, a broadcast
//! revoke is recorded, purge deletes waiting messages only, and the
//! delayed messages of queues are listed.
//!
//! [`Control`]: celeriac_core::Control

use std::time::Duration;

use celeriac_core::{ControlReply, ControlRequest};
use serde_json::{Map, json};

use crate::{Fixture, LONG, out, q};

/// Answers every request `node` is named in with `{"ok": "<method> from
/// <node>"}`, until the inbox ends or the task is aborted.
fn serve(f: &Fixture, node: &'static str, mut inbox: celeriac_core::ControlInbox) {
    let broker = f.other.clone();
    tokio::spawn(async move {
        while let Some(req) = inbox.recv().await {
            if !req.matches(node) {
                continue;
            }
            if let (Some(to), Some(ticket)) = (&req.reply_to, &req.ticket) {
                let mut body = Map::new();
                body.insert(
                    node.to_string(),
                    json!({"ok": format!("{} from {node}", req.method), "args": req.arguments}),
                );
                let reply = ControlReply {
                    ticket: ticket.clone(),
                    clock: 1,
                    body,
                };
                broker.reply(to, &reply).await.expect("reply");
            }
        }
    });
}

/// Contract: `control_calls_reach_every_listener_and_collect_their_replies`.
pub async fn control_calls_reach_every_listener_and_collect_their_replies(
    make: fn(Duration) -> Fixture,
) {
    let f = make(LONG);
    serve(&f, "w1@h", f.other.listen("w1@h").await.unwrap());
    serve(&f, "w2@h", f.other.listen("w2@h").await.unwrap());
    let req = ControlRequest::new("ping").arg("n", 3);
    let mut replies = f.broker.call(req, LONG, Some(2)).await.unwrap();
    replies.sort_by_key(|r| r.keys().next().cloned());
    assert_eq!(replies.len(), 2, "{replies:?}");
    assert_eq!(replies[0]["w1@h"]["ok"], "ping from w1@h");
    assert_eq!(replies[1]["w2@h"]["ok"], "ping from w2@h");
    assert_eq!(replies[0]["w1@h"]["args"], json!({"n": 3}));

    // A destination limits who answers, and how many replies are awaited.
    let req = ControlRequest::new("stats").to_nodes(["w2@h"]);
    let replies = f.broker.call(req, LONG, None).await.unwrap();
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert!(replies[0].contains_key("w2@h"), "{replies:?}");

    // Nobody matches: the call ends empty after its timeout.
    let req = ControlRequest::new("ping").matching("nobody*", "glob");
    let replies = f
        .broker
        .call(req, Duration::from_millis(300), None)
        .await
        .unwrap();
    assert!(replies.is_empty(), "{replies:?}");
}

/// Contract: `control_casts_arrive_and_stray_replies_are_dropped`.
pub async fn control_casts_arrive_and_stray_replies_are_dropped(make: fn(Duration) -> Fixture) {
    let f = make(LONG);
    let mut inbox = f.other.listen("w1@h").await.unwrap();
    let mut cast = ControlRequest::new("heartbeat");
    cast.clock = 5;
    f.broker.broadcast(&cast).await.unwrap();
    let got = tokio::time::timeout(LONG * 5, inbox.recv())
        .await
        .expect("the cast arrives")
        .unwrap();
    assert_eq!(got.method, "heartbeat");
    assert!(!got.wants_reply() && got.ticket.is_none());
    assert!(got.clock >= 1);

    // A reply to a mailbox nobody opened (its client gave up) is dropped
    // without an error, and a reply with another ticket is not collected.
    let to = celeriac_core::broker::ReplyTo {
        exchange: celeriac_core::broker::REPLY_EXCHANGE.into(),
        routing_key: "gone".into(),
    };
    let mut body = Map::new();
    body.insert("w1@h".into(), json!({"ok": "late"}));
    let late = ControlReply {
        ticket: "t".into(),
        clock: 1,
        body,
    };
    f.other.reply(&to, &late).await.unwrap();
    f.broker.open_replies("mine").await.unwrap();
    let to = celeriac_core::broker::ReplyTo {
        routing_key: "mine".into(),
        ..to
    };
    f.other.reply(&to, &late).await.unwrap();
    let got = f.broker.next_replies("mine", LONG).await.unwrap();
    assert_eq!(got, vec![late.clone()]);
    f.broker.close_replies("mine").await.unwrap();
    f.other.reply(&to, &late).await.unwrap();
    f.broker.open_replies("mine").await.unwrap();
    let got = f
        .broker
        .next_replies("mine", Duration::from_millis(100))
        .await
        .unwrap();
    assert!(got.is_empty(), "a closed mailbox keeps nothing: {got:?}");
    f.broker.close_replies("mine").await.unwrap();
}

/// Contract: `a_broadcast_revoke_is_recorded`.
pub async fn a_broadcast_revoke_is_recorded(make: fn(Duration) -> Fixture) {
    let f = make(LONG);
    let req = ControlRequest::new("revoke")
        .arg("task_id", json!(["r1", "r2"]))
        .arg("terminate", true)
        .arg("signal", "SIGKILL");
    f.broker.broadcast(&req).await.unwrap();
    let ids = ["r1".to_string(), "r2".to_string(), "r3".to_string()];
    assert_eq!(f.other.revoked(&ids).await.unwrap(), ids[..2].to_vec());
    assert_eq!(f.other.terminations(&ids).await.unwrap(), ids[..2].to_vec());
    let one = ControlRequest::new("revoke").arg("task_id", "r3");
    f.broker.broadcast(&one).await.unwrap();
    assert_eq!(f.other.revoked(&ids[2..]).await.unwrap(), ids[2..].to_vec());
    assert!(f.other.terminations(&ids[2..]).await.unwrap().is_empty());
    // Ids heard of from other workers (mingle) are honoured the same way.
    let merged = ["m1".to_string(), "r1".to_string()];
    f.broker
        .merge_revoked(&merged, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(f.other.revoked(&merged).await.unwrap(), merged.to_vec());
    assert!(f.other.terminations(&merged[..1]).await.unwrap().is_empty());
}

/// Contract: `purge_deletes_waiting_messages_and_keeps_held_ones`.
pub async fn purge_deletes_waiting_messages_and_keeps_held_ones(make: fn(Duration) -> Fixture) {
    let f = make(LONG);
    let queue = "purged";
    for p in [0, 0, 5, 9] {
        f.broker.publish(out(queue, p, None).0).await.unwrap();
    }
    f.broker.publish(out("kept", 0, None).0).await.unwrap();
    let held = f.other.claim("w", &q(&[queue]), 1, LONG).await.unwrap();
    assert_eq!(held.len(), 1);
    assert_eq!(f.broker.purge(queue).await.unwrap(), 3);
    assert_eq!(f.broker.queue_len(queue).await.unwrap(), 0);
    assert_eq!(f.broker.purge(queue).await.unwrap(), 0, "nothing left");
    assert_eq!(
        f.broker.queue_len("kept").await.unwrap(),
        1,
        "other queues stay"
    );
    f.other
        .ack(&held[0])
        .await
        .expect("a held message is untouched");
}

/// Contract: `delayed_messages_are_listed_by_queue`.
pub async fn delayed_messages_are_listed_by_queue(make: fn(Duration) -> Fixture) {
    let f = make(LONG);
    let now = celeriac_core::time::unix_now();
    let (late, late_id) = out("sched", 3, Some(now + 600.0));
    let (soon, soon_id) = out("sched", 0, Some(now + 300.0));
    let (other, other_id) = out("elsewhere", 0, Some(now + 400.0));
    let (ready, _) = out("sched", 0, None);
    f.broker
        .publish_batch(vec![late, soon, other, ready])
        .await
        .unwrap();
    let listed = f.other.delayed(&q(&["sched"]), 10).await.unwrap();
    let ids: Vec<String> = listed
        .iter()
        .map(|(_, _, p)| celeriac_core::Message::decode(p).unwrap().id().to_string())
        .collect();
    assert_eq!(
        ids,
        [soon_id.clone(), late_id],
        "soonest first, this queue only"
    );
    assert!(
        (listed[0].0 - (now + 300.0)).abs() < 0.01,
        "{}",
        listed[0].0
    );
    assert!(listed.iter().all(|(_, queue, _)| queue == "sched"));
    let both = f
        .other
        .delayed(&q(&["sched", "elsewhere"]), 2)
        .await
        .unwrap();
    let ids: Vec<String> = both
        .iter()
        .map(|(_, _, p)| celeriac_core::Message::decode(p).unwrap().id().to_string())
        .collect();
    assert_eq!(ids, [soon_id, other_id], "at most the limit, soonest first");
    assert_eq!(both[1].1, "elsewhere");
}
