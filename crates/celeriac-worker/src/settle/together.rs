//! A settle batch in one call, where the broker shares its store with the
//! result backend ([`SettleTogether`]): the results stored, the chord
//! header parts joined and the messages acked in one atomic step, in that
//! order. The parts of a chord the batch completes are held back by the
//! broker: the chord's body is sent, then they are acked, as in the
//! separate path (a worker killed before the body is sent leaves them to
//! come back and complete the chord).

use celeriac_core::broker::{Fate, Finished, SettleTogether};
use celeriac_core::escape::Escaped;
use celeriac_core::{Delivery, PartReturn};

use super::{ToSettle, ack_all, complete_chord, not_held};
use crate::worker::Inner;

/// Settles `batch` in one call, then sends the bodies of the chords it
/// completes and acks their held-back parts. On an error, nothing is told
/// and the batch comes back whole, for the separate calls (every step is
/// safe to repeat: a stored SUCCESS is kept, a part is counted once).
pub(super) async fn settle_batch(
    inner: &Inner,
    joint: &dyn SettleTogether,
    batch: Vec<ToSettle>,
) -> Result<(), Vec<ToSettle>> {
    let finished: Vec<Finished<'_>> = batch
        .iter()
        .map(|s| Finished {
            meta: s.meta.as_ref(),
            part: s.join.as_deref().map(|j| {
                (
                    j.chord.group_id.as_str(),
                    PartReturn {
                        task_id: j.msg.id(),
                        group_index: j.chord.index,
                        part: &j.chord.part,
                    },
                )
            }),
            delivery: &s.delivery,
        })
        .collect();
    let settled = match joint.settle_together(&finished).await {
        Ok(s) if s.fates.len() == batch.len() => s,
        Ok(s) => {
            tracing::error!(
                expected = batch.len(),
                got = s.fates.len(),
                "settling a batch in one call answered for the wrong number of tasks; settling it again with separate calls"
            );
            return Err(batch);
        }
        Err(e) => {
            tracing::warn!(error = %e, count = batch.len(),
                "could not settle a batch in one call; settling it with separate calls");
            return Err(batch);
        }
    };
    drop(finished);
    for (group, parts) in &settled.completed {
        // The held-back parts of this chord, and the last of them, the
        // body's parent.
        let mut held: Vec<Delivery> = Vec::new();
        let mut last = None;
        for (s, fate) in batch.iter().zip(&settled.fates) {
            if let Some(j) = s.join.as_deref().filter(|j| j.chord.group_id == *group) {
                last = Some(j);
                if *fate == Fate::HeldBack {
                    held.push(s.delivery.clone());
                }
            }
        }
        match (last, inner.backend.chord_join()) {
            (Some(last), Some(join)) => {
                complete_chord(inner, join, &last.msg, &last.chord, parts).await;
            }
            _ => {
                tracing::error!(group = %Escaped(group),
                    "the broker says this batch completes a chord it has no part of, or the backend has no chord join; the parts are acked and the chord is not completed here");
            }
        }
        ack_all(inner, &held).await;
    }
    for (s, fate) in batch.into_iter().zip(settled.fates) {
        match fate {
            Fate::NotHeld => not_held(&s.delivery),
            Fate::HeldBack
                if !settled
                    .completed
                    .iter()
                    .any(|(g, _)| s.join.as_ref().is_some_and(|j| j.chord.group_id == *g)) =>
            {
                // Not a part of a chord completed here: nothing else would
                // ack it.
                ack_all(inner, std::slice::from_ref(&s.delivery)).await;
            }
            _ => {}
        }
        if let Some(done) = s.done {
            let _ = done.send(None);
        }
    }
    Ok(())
}
