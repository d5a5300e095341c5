//! How canvases compose, with the rules of Celery's `|` operator
//! (`celery/canvas.py`: `_merge_chain_step`, `_chain.__or__`,
//! `group.__or__`, `_chord.__or__`): a group followed by a task becomes a
//! chord, a task after a chord joins the chord's body, nested chains are
//! spliced. Building the same tree Celery builds is what makes the lowered
//! messages the same.

use super::node::{Kind, Node};

/// Celery's `unchain_tasks`: a chain's steps, with the chain's `link` on
/// the last one and its `link_error` on every one.
pub(crate) fn unchain(mut chain: Node) -> Vec<Node> {
    let Kind::Chain(mut steps) = std::mem::replace(&mut chain.kind, Kind::Chain(Vec::new())) else {
        return vec![chain];
    };
    if let Some(last) = steps.last_mut() {
        last.link.extend(chain.link);
    }
    for eb in &chain.link_error {
        for s in &mut steps {
            add_link_error(s, eb.clone());
        }
    }
    steps
}

/// Celery's `sig.link_error(eb)` on any node: a task keeps it, a chain
/// gives it to every step when it runs, a group to every member, a chord
/// to its body (and to the chords in its header, which give it to theirs).
pub(crate) fn add_link_error(node: &mut Node, eb: Node) {
    match &mut node.kind {
        Kind::Task(_) | Kind::Chain(_) => {
            if !node.link_error.contains(&eb) {
                node.link_error.push(eb);
            }
        }
        Kind::Group(members) => members
            .iter_mut()
            .for_each(|m| add_link_error(m, eb.clone())),
        Kind::Chord { header, body } => {
            if let Kind::Group(members) = &mut header.kind {
                for m in members.iter_mut() {
                    if matches!(m.kind, Kind::Chord { .. }) {
                        add_link_error(m, eb.clone());
                    }
                }
            }
            add_link_error(body, eb);
        }
    }
}

/// Celery's `sig.link(cb)`: a task keeps it, a chain gives it to its last
/// step, a chord to its body. A group cannot be linked (Celery refuses:
/// "use a chord"); that is reported when the canvas is lowered.
pub(crate) fn add_link(node: &mut Node, cb: Node) {
    match &mut node.kind {
        Kind::Chord { body, .. } => add_link(body, cb),
        _ => node.link.push(cb),
    }
}

/// `steps` followed by `other`, as `_merge_chain_step` adds a step.
pub(crate) fn merge_step(steps: &mut Vec<Node>, other: Node) {
    match &other.kind {
        Kind::Group(members) if members.is_empty() => {}
        Kind::Group(members) if members.len() == 1 => {
            let Kind::Group(mut members) = other.kind else {
                unreachable!()
            };
            merge_step(steps, members.remove(0));
        }
        Kind::Group(_) => match steps.last_mut() {
            Some(last) if matches!(last.kind, Kind::Chord { .. }) => chord_body_then(last, other),
            _ => steps.push(other),
        },
        Kind::Chain(_) => {
            for s in unchain(other) {
                merge_step(steps, s);
            }
        }
        Kind::Task(_) | Kind::Chord { .. } => {
            let other_is_chord = matches!(other.kind, Kind::Chord { .. });
            match steps.last_mut() {
                Some(last) if matches!(last.kind, Kind::Group(_)) => {
                    let group = std::mem::replace(last, Node::new(Kind::Chain(Vec::new())));
                    *last = chord(group, other);
                }
                Some(last) if matches!(last.kind, Kind::Chord { .. }) && !other_is_chord => {
                    chord_body_then(last, other);
                }
                _ => steps.push(other),
            }
        }
    }
}

/// A chord of `header` (a group node) and `body`.
pub(crate) fn chord(header: Node, body: Node) -> Node {
    Node::new(Kind::Chord {
        header: Box::new(header),
        body: Box::new(body),
    })
}

/// A chord's body followed by `other`.
fn chord_body_then(chord: &mut Node, other: Node) {
    if let Kind::Chord { body, .. } = &mut chord.kind {
        let b = std::mem::replace(&mut **body, Node::new(Kind::Chain(Vec::new())));
        **body = then(b, other);
    }
}

/// Celery's `a | b`.
pub(crate) fn then(a: Node, b: Node) -> Node {
    match &a.kind {
        Kind::Group(_) => chord(a, b),
        Kind::Chord { .. } if matches!(b.kind, Kind::Task(_) | Kind::Chord { .. }) => {
            let mut a = a;
            chord_body_then(&mut a, b);
            a
        }
        _ => {
            let mut steps = match a.kind {
                Kind::Chain(_) => unchain(a),
                _ => vec![a],
            };
            merge_step(&mut steps, b);
            Node::new(Kind::Chain(steps))
        }
    }
}

/// Celery's `chain(a, ..., next)` (`_fold_chain`), built one step at a
/// time: the steps so far (a chain's own steps, spliced) with `next`
/// merged in; a group followed by more becomes a chord.
pub(crate) fn chain_then(head: Node, next: Node) -> Node {
    let mut steps = match &head.kind {
        Kind::Chain(_) => unchain(head),
        Kind::Group(members) if members.len() > 1 => return then(head, next),
        _ => {
            let mut steps = Vec::new();
            merge_step(&mut steps, head);
            steps
        }
    };
    merge_step(&mut steps, next);
    Node::new(Kind::Chain(steps))
}

/// Nested chains spliced into their parent (keeping their links), and,
/// when applying, chords whose body is a chain led by a task unrolled
/// (Celery's `_chord._unroll_body`).
pub(crate) fn flatten(steps: Vec<Node>, applying: bool) -> Vec<Node> {
    let mut out = Vec::with_capacity(steps.len());
    for s in steps {
        match &s.kind {
            Kind::Chain(_) => out.extend(flatten(unchain(s), applying)),
            Kind::Chord { body, .. }
                if applying
                    && matches!(&body.kind, Kind::Chain(b) if b.first().is_some_and(|f| !matches!(f.kind, Kind::Group(_)))) =>
            {
                let mut s = s;
                let Kind::Chord { body, .. } = &mut s.kind else {
                    unreachable!()
                };
                let chain = std::mem::replace(&mut **body, Node::new(Kind::Chain(Vec::new())));
                let chain_options = chain.options.clone();
                let mut rest = unchain(chain).into_iter();
                let mut first = rest.next().expect("the chain has a first step");
                for (k, v) in chain_options {
                    if !CHAIN_RUN_OPTIONS.contains(&k.as_str()) {
                        first.options.insert(k, v);
                    }
                }
                **body = first;
                out.extend(flatten(vec![s], applying));
                out.extend(flatten(rest.collect(), applying));
            }
            _ => out.push(s),
        }
    }
    out
}

/// Options of a chain that `_chain.run` consumes instead of passing them
/// to its first step.
const CHAIN_RUN_OPTIONS: [&str; 8] = [
    "chord",
    "group_id",
    "group_index",
    "link",
    "link_error",
    "parent_id",
    "root_id",
    "task_id",
];

/// Celery's `_strip_chord_header_links`: a chord's header members do not
/// carry the body while the canvas travels inside a message; the chord
/// puts it back when it is applied.
pub(crate) fn strip_chord_header_links(node: &mut Node) {
    match &mut node.kind {
        Kind::Chord { header, body } => {
            clear_chord_option(header);
            strip_chord_header_links(header);
            strip_chord_header_links(body);
        }
        Kind::Group(members) | Kind::Chain(members) => {
            members.iter_mut().for_each(strip_chord_header_links);
        }
        Kind::Task(_) => {}
    }
}

fn clear_chord_option(node: &mut Node) {
    node.options.remove("chord");
    match &mut node.kind {
        Kind::Group(members) => members.iter_mut().for_each(clear_chord_option),
        Kind::Chain(steps) => {
            if let Some(last) = steps.last_mut() {
                clear_chord_option(last);
            }
        }
        Kind::Chord { body, .. } => clear_chord_option(body),
        Kind::Task(_) => {}
    }
}
