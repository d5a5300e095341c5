//! The frames parent and child exchange: a 4-byte little-endian length,
//! then that many bytes of JSON. Parent-to-child frames put an 8-byte
//! little-endian sequence number before the JSON, so that a job's JSON can
//! be encoded once, when it is submitted, outside the pool's lock.
//!
//! JSON because task arguments and results are `serde_json::Value`s
//! already (Celery's own encoding), which compact binary formats such as
//! postcard cannot carry (they are not self-describing).

use std::io::{self, Read, Write};

use celeriac_core::{Args, TaskContext, TaskError};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Larger frames are refused: a corrupt length must not allocate gigabytes.
pub(crate) const MAX_FRAME: usize = 512 << 20;

/// Parent → child.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ToChild {
    /// Run one task.
    Run(Box<RunFrame>),
    /// Run one task over many argument sets, one after another.
    RunBatch(Box<BatchFrame>),
    /// Finish and exit (recycling, shrinking, shutdown).
    Exit,
}

/// One task for a child.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct RunFrame {
    pub(crate) name: String,
    pub(crate) ctx: TaskContext,
    pub(crate) args: Args,
    /// Whether the parent stores the task's states (`update_state`).
    #[serde(default)]
    pub(crate) states: bool,
}

/// Many calls of one task in one frame (`ProcessPool::map`).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct BatchFrame {
    pub(crate) name: String,
    pub(crate) ctx: TaskContext,
    pub(crate) items: BatchItems,
    /// Whether the parent stores the task's states (`update_state`).
    #[serde(default)]
    pub(crate) states: bool,
}

/// Child → parent.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ToParent {
    /// The child is up and serving.
    Ready { pid: u32 },
    /// A task finished.
    Done(DoneFrame),
    /// A batch finished: one result per item, in order.
    DoneBatch(DoneBatchFrame),
    /// A running task set a state of its own (`update_state`).
    State(StateFrame),
}

/// A state a running task set, for the parent to store.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct StateFrame {
    /// The task's frame.
    pub(crate) seq: u64,
    pub(crate) state: String,
    pub(crate) meta: Value,
}

/// A batch's argument sets, compact: when every item is one positional
/// argument and no keyword argument (`map` over values), the values
/// themselves, `[1,2,3]`; otherwise each item's positional arguments as an
/// array, or `{"a": [...], "k": {...}}` when it has keyword arguments.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum BatchItems {
    /// One positional argument per item.
    #[serde(rename = "1")]
    Single(Vec<Value>),
    /// Any arguments.
    #[serde(rename = "n")]
    Many(Vec<CompactArgs>),
}

impl BatchItems {
    /// How many items.
    pub(crate) fn len(&self) -> usize {
        match self {
            BatchItems::Single(v) => v.len(),
            BatchItems::Many(v) => v.len(),
        }
    }

    /// The items as arguments, in order.
    pub(crate) fn into_args(self) -> Box<dyn Iterator<Item = Args>> {
        match self {
            BatchItems::Single(v) => Box::new(
                v.into_iter()
                    .map(|x| Args::new(vec![x], Default::default())),
            ),
            BatchItems::Many(v) => Box::new(v.into_iter().map(|c| c.0)),
        }
    }
}

/// Borrowed [`BatchItems`], for encoding `Args` without copying them.
pub(crate) enum BatchItemsRef<'a> {
    /// Items that are each one positional argument.
    Single(&'a [Args]),
    /// Any items.
    Many(&'a [Args]),
}

impl<'a> BatchItemsRef<'a> {
    /// The compact form that fits `items`.
    pub(crate) fn of(items: &'a [Args]) -> Self {
        if items
            .iter()
            .all(|a| a.args.len() == 1 && a.kwargs.is_empty())
        {
            BatchItemsRef::Single(items)
        } else {
            BatchItemsRef::Many(items)
        }
    }
}

impl Serialize for BatchItemsRef<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        struct Seq<'a, F: Fn(&'a Args) -> CompactRef<'a>>(&'a [Args], F);
        impl<'a, F: Fn(&'a Args) -> CompactRef<'a>> Serialize for Seq<'a, F> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut seq = s.serialize_seq(Some(self.0.len()))?;
                for a in self.0 {
                    seq.serialize_element(&(self.1)(a))?;
                }
                seq.end()
            }
        }
        match self {
            BatchItemsRef::Single(items) => s.serialize_newtype_variant(
                "BatchItems",
                0,
                "1",
                &Seq(items, |a| CompactRef::Value(&a.args[0])),
            ),
            BatchItemsRef::Many(items) => {
                s.serialize_newtype_variant("BatchItems", 1, "n", &Seq(items, CompactRef::Args))
            }
        }
    }
}

/// One item of [`BatchItemsRef`] as it is written.
pub(crate) enum CompactRef<'a> {
    Value(&'a Value),
    Args(&'a Args),
}

impl Serialize for CompactRef<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match self {
            CompactRef::Value(v) => v.serialize(s),
            CompactRef::Args(a) if a.kwargs.is_empty() => a.args.serialize(s),
            CompactRef::Args(a) => {
                let mut m = s.serialize_map(Some(2))?;
                m.serialize_entry("a", &a.args)?;
                m.serialize_entry("k", &a.kwargs)?;
                m.end()
            }
        }
    }
}

/// One item's arguments, read from its compact form: an array of
/// positional arguments, or `{"a": [...], "k": {...}}`.
#[derive(Debug)]
pub(crate) struct CompactArgs(pub(crate) Args);

impl Serialize for CompactArgs {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        CompactRef::Args(&self.0).serialize(s)
    }
}

impl<'de> Deserialize<'de> for CompactArgs {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = CompactArgs;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an array of arguments, or {\"a\": [...], \"k\": {...}}")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                let mut args = Vec::with_capacity(seq.size_hint().unwrap_or(1));
                while let Some(v) = seq.next_element()? {
                    args.push(v);
                }
                Ok(CompactArgs(Args::new(args, Default::default())))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut out = Args::default();
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    match key.as_ref() {
                        "a" => out.args = map.next_value()?,
                        "k" => out.kwargs = map.next_value()?,
                        other => {
                            return Err(serde::de::Error::unknown_field(other, &["a", "k"]));
                        }
                    }
                }
                Ok(CompactArgs(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// A batch's results, compact: the values alone when every item
/// succeeded, else each item's `{"Ok": ...}` or `{"Err": ...}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum BatchResults {
    /// Every item succeeded.
    #[serde(rename = "ok")]
    Values(Vec<Value>),
    /// Some failed.
    #[serde(rename = "mixed")]
    Mixed(Vec<Result<Value, TaskError>>),
}

impl BatchResults {
    /// The compact form of `results`.
    #[cfg(test)]
    pub(crate) fn of(results: Vec<Result<Value, TaskError>>) -> Self {
        if results.iter().all(Result::is_ok) {
            BatchResults::Values(results.into_iter().flatten().collect())
        } else {
            BatchResults::Mixed(results)
        }
    }

    /// The compact form of `len` results, gathered as they come: the
    /// values alone until an item fails.
    pub(crate) fn collect(
        results: impl Iterator<Item = Result<Value, TaskError>>,
        len: usize,
    ) -> Self {
        let mut values = Vec::with_capacity(len);
        let mut results = results;
        for r in results.by_ref() {
            match r {
                Ok(v) => values.push(v),
                Err(e) => {
                    let mut mixed = Vec::with_capacity(len);
                    mixed.extend(values.into_iter().map(Ok));
                    mixed.push(Err(e));
                    mixed.extend(results);
                    return BatchResults::Mixed(mixed);
                }
            }
        }
        BatchResults::Values(values)
    }

    /// How many results.
    pub(crate) fn len(&self) -> usize {
        match self {
            BatchResults::Values(v) => v.len(),
            BatchResults::Mixed(v) => v.len(),
        }
    }

    /// Appends each item's result, in order, to `out`.
    pub(crate) fn append_to(self, out: &mut Vec<Result<Value, TaskError>>) {
        match self {
            BatchResults::Values(v) => out.extend(v.into_iter().map(Ok)),
            BatchResults::Mixed(v) => out.extend(v),
        }
    }

    /// Each item's result, in order.
    #[cfg(test)]
    pub(crate) fn into_results(self) -> Vec<Result<Value, TaskError>> {
        match self {
            BatchResults::Values(v) => v.into_iter().map(Ok).collect(),
            BatchResults::Mixed(v) => v,
        }
    }
}

/// A finished batch.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct DoneBatchFrame {
    pub(crate) seq: u64,
    pub(crate) results: BatchResults,
    pub(crate) runtime_ns: u64,
    pub(crate) peak_rss: Option<u64>,
}

/// A finished task.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct DoneFrame {
    pub(crate) seq: u64,
    pub(crate) result: Result<Value, TaskError>,
    pub(crate) runtime_ns: u64,
    /// Peak resident set size of the child so far, in bytes, when the pool
    /// has a memory limit (reading it costs a file read per task).
    pub(crate) peak_rss: Option<u64>,
}

/// Writes one frame.
pub(crate) fn write<T: Serialize>(w: &mut impl Write, frame: &T) -> io::Result<()> {
    let mut buf = Vec::with_capacity(256);
    buf.extend_from_slice(&[0; 4]);
    serde_json::to_writer(&mut buf, frame).map_err(io::Error::other)?;
    let len = u32::try_from(buf.len() - 4)
        .ok()
        .filter(|&n| (n as usize) <= MAX_FRAME)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "frame too large"))?;
    buf[..4].copy_from_slice(&len.to_le_bytes());
    w.write_all(&buf)
}

/// Writes one parent-to-child frame: `seq`, then the JSON `body`.
pub(crate) fn write_seq(w: &mut impl Write, seq: u64, body: &[u8]) -> io::Result<()> {
    let mut buf = Vec::with_capacity(body.len() + 12);
    put_seq(&mut buf, seq, body);
    w.write_all(&buf)
}

/// Appends one parent-to-child frame to `out`: `seq`, then the JSON
/// `body` (which `encode` keeps under [`MAX_FRAME`]).
pub(crate) fn put_seq(out: &mut Vec<u8>, seq: u64, body: &[u8]) {
    let len = u32::try_from(body.len() + 8).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(body);
}

/// Whether `buf` (what a buffered reader holds) starts with a whole
/// frame: reading it then makes no system call.
pub(crate) fn complete_in(buf: &[u8]) -> bool {
    buf.len() >= 4
        && buf.len() - 4 >= u32::from_le_bytes(buf[..4].try_into().expect("4 bytes")) as usize
}

/// Reads one parent-to-child frame: its sequence number and body.
pub(crate) fn read_seq<T: for<'de> Deserialize<'de>>(
    r: &mut impl Read,
) -> io::Result<Option<(u64, T)>> {
    let Some(raw) = read_raw(r)? else {
        return Ok(None);
    };
    if raw.len() < 8 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "frame too short",
        ));
    }
    let seq = u64::from_le_bytes(raw[..8].try_into().expect("8 bytes"));
    serde_json::from_slice(&raw[8..])
        .map(|v| Some((seq, v)))
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Reads one frame; `Ok(None)` at a clean end of stream.
pub(crate) fn read<T: for<'de> Deserialize<'de>>(r: &mut impl Read) -> io::Result<Option<T>> {
    let Some(body) = read_raw(r)? else {
        return Ok(None);
    };
    serde_json::from_slice(&body)
        .map(Some)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

fn read_raw(r: &mut impl Read) -> io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes exceeds {MAX_FRAME}"),
        ));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    Ok(Some(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_end_cleanly() {
        let mut buf = Vec::new();
        write(
            &mut buf,
            &ToParent::Done(DoneFrame {
                seq: 7,
                result: Err(TaskError::worker_lost("gone").retryable()),
                runtime_ns: 5,
                peak_rss: Some(1),
            }),
        )
        .unwrap();
        write_seq(&mut buf, 9, &serde_json::to_vec(&ToChild::Exit).unwrap()).unwrap();
        let mut r = &buf[..];
        match read::<ToParent>(&mut r).unwrap().unwrap() {
            ToParent::Done(d) => {
                assert_eq!(d.seq, 7);
                let e = d.result.unwrap_err();
                assert_eq!(e.kind(), celeriac_core::TaskErrorKind::WorkerLost);
                assert!(e.is_retryable());
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            read_seq::<ToChild>(&mut r).unwrap(),
            Some((9, ToChild::Exit))
        ));
        assert!(read_seq::<ToChild>(&mut r).unwrap().is_none());
    }

    #[test]
    fn batches_are_written_compactly_and_read_back() {
        let single: Vec<Args> = (0..3)
            .map(|i| Args::new(vec![Value::from(i)], Default::default()))
            .collect();
        let body = serde_json::to_string(&BatchItemsRef::of(&single)).unwrap();
        assert_eq!(body, r#"{"1":[0,1,2]}"#);
        let back: BatchItems = serde_json::from_str(&body).unwrap();
        let args: Vec<Args> = back.into_args().collect();
        assert_eq!(args.len(), 3);
        assert_eq!(args[2].args, vec![Value::from(2)]);

        let mut kw = serde_json::Map::new();
        kw.insert("k".into(), Value::from("v"));
        let many = vec![
            Args::new(vec![Value::from(1), Value::from(2)], Default::default()),
            Args::new(
                vec![serde_json::json!([1]), serde_json::json!({"a": 1})],
                Default::default(),
            ),
            Args::new(vec![], kw),
        ];
        let body = serde_json::to_string(&BatchItemsRef::of(&many)).unwrap();
        assert_eq!(
            body,
            r#"{"n":[[1,2],[[1],{"a":1}],{"a":[],"k":{"k":"v"}}]}"#
        );
        let back: Vec<Args> = serde_json::from_str::<BatchItems>(&body)
            .unwrap()
            .into_args()
            .collect();
        assert_eq!(back[0].args, many[0].args);
        assert_eq!(
            back[1].args, many[1].args,
            "a positional dict is not kwargs"
        );
        assert!(back[1].kwargs.is_empty());
        assert_eq!(back[2].kwargs, many[2].kwargs);
        assert!(serde_json::from_str::<BatchItems>(r#"{"n":[{"x":1}]}"#).is_err());

        let ok = BatchResults::of(vec![Ok(Value::from(1)), Ok(Value::from(2))]);
        assert_eq!(serde_json::to_string(&ok).unwrap(), r#"{"ok":[1,2]}"#);
        let mixed = BatchResults::of(vec![Ok(Value::from(1)), Err(TaskError::new("no"))]);
        let body = serde_json::to_string(&mixed).unwrap();
        let back: BatchResults = serde_json::from_str(&body).unwrap();
        let back = back.into_results();
        assert_eq!(back[0].as_ref().unwrap(), &Value::from(1));
        assert_eq!(back[1].as_ref().unwrap_err().message(), "no");
    }

    #[test]
    fn batch_results_are_gathered_compactly_until_one_fails() {
        let all_ok = BatchResults::collect((0..3).map(|i| Ok(Value::from(i))), 3);
        assert!(matches!(&all_ok, BatchResults::Values(v) if v.len() == 3));
        let results = vec![
            Ok(Value::from(1)),
            Err(TaskError::new("no")),
            Ok(Value::from(3)),
        ];
        let mixed = BatchResults::collect(results.into_iter(), 3);
        assert_eq!(mixed.len(), 3);
        let mut out = vec![Ok(Value::from(0))];
        mixed.append_to(&mut out);
        assert_eq!(out.len(), 4);
        assert_eq!(out[1].as_ref().unwrap(), &Value::from(1));
        assert_eq!(out[2].as_ref().unwrap_err().message(), "no");
        assert_eq!(out[3].as_ref().unwrap(), &Value::from(3));
    }

    #[test]
    fn complete_in_sees_whole_frames_only() {
        let mut buf = Vec::new();
        put_seq(&mut buf, 3, b"{}");
        assert!(complete_in(&buf));
        assert!(!complete_in(&buf[..buf.len() - 1]));
        assert!(!complete_in(&buf[..3]));
        assert!(!complete_in(&[]));
        let mut r = &buf[..];
        assert!(matches!(read_seq::<Value>(&mut r).unwrap(), Some((3, _))));
    }

    #[test]
    fn a_torn_or_huge_frame_is_an_error() {
        let mut r = &[1u8, 0][..];
        assert!(read::<ToChild>(&mut r).is_err());
        let mut r = &u32::MAX.to_le_bytes()[..];
        assert!(read::<ToChild>(&mut r).is_err());
        // A parent frame shorter than its sequence number.
        let mut r = &[2u8, 0, 0, 0, 1, 2][..];
        assert!(read_seq::<ToChild>(&mut r).is_err());
    }
}
