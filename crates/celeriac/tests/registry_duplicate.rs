//! Two linked tasks with one name: the registry refuses to start.

use celeriac::{Registry, RegistryError, task};

#[task(name = "dup.same")]
fn first() -> i64 {
    1
}

mod other {
    use celeriac::task;

    #[task(name = "dup.same")]
    pub(crate) fn second() -> i64 {
        2
    }
}

#[test]
fn duplicate_linked_names_fail_at_startup() {
    assert_eq!(first() + other::second(), 3);
    match Registry::linked(false) {
        Err(RegistryError::Duplicate(name)) => assert_eq!(name, "dup.same"),
        other => panic!("expected a duplicate-name error, got {other:?}"),
    }
}
