//! The Python side of the interop tests: the interpreter with Celery that
//! `scripts/test.sh` names in `CELERIAC_TEST_PYTHON`, and the scripts of
//! `tests/python/`.

use std::path::{Path, PathBuf};

use crate::redis_server::RedisServer;

/// The Python interpreter with Celery, or `None` (with a note) when the
/// interop environment is not set up or `redis-server` is missing. Under
/// `scripts/test.sh` (`CELERIAC_REQUIRE_INTEROP=1`) a missing interpreter
/// is a failure, not a skip.
pub fn interop_python() -> Option<String> {
    match std::env::var("CELERIAC_TEST_PYTHON") {
        Ok(p) if RedisServer::available() => Some(p),
        Ok(_) => None,
        Err(_) if std::env::var("CELERIAC_REQUIRE_INTEROP").as_deref() == Ok("1") => {
            panic!("CELERIAC_TEST_PYTHON must be set")
        }
        Err(_) => {
            eprintln!("skipped: run scripts/test.sh to set up the Celery venv");
            None
        }
    }
}

/// `tests/python/` of the repository.
pub fn python_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/python")
}
