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
    pub(crate) items: Vec<Args>,
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

/// A finished batch.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct DoneBatchFrame {
    pub(crate) seq: u64,
    pub(crate) results: Vec<Result<Value, TaskError>>,
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
    let len = u32::try_from(body.len() + 8)
        .ok()
        .filter(|&n| (n as usize) <= MAX_FRAME)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "frame too large"))?;
    let mut buf = Vec::with_capacity(body.len() + 12);
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&seq.to_le_bytes());
    buf.extend_from_slice(body);
    w.write_all(&buf)
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
