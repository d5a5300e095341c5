//! Fresh task ids without a system call each.

use std::cell::Cell;

/// A fresh task id: a random (version 4) UUID in its hyphenated form, as
/// Celery's, drawn from a per-thread generator (wyrand) seeded once from
/// the operating system's, which costs a system call per id.
///
/// The ids are unique, not secret: use the OS generator for tokens.
///
/// # Examples
///
/// ```
/// let id = celeriac_core::id::fresh_uuid();
/// assert_eq!(id.len(), 36);
/// assert_ne!(id, celeriac_core::id::fresh_uuid());
/// ```
pub fn fresh_uuid() -> String {
    thread_local! {
        static STATE: Cell<u64> = Cell::new(uuid::Uuid::new_v4().as_u64_pair().0);
    }
    let next = || {
        STATE.with(|s| {
            let x = s.get().wrapping_add(0xa076_1d64_78bd_642f);
            s.set(x);
            let t = u128::from(x) * u128::from(x ^ 0xe703_7ed1_a0b4_28db);
            ((t >> 64) as u64) ^ (t as u64)
        })
    };
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&next().to_le_bytes());
    bytes[8..].copy_from_slice(&next().to_le_bytes());
    uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .hyphenated()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::fresh_uuid;

    #[test]
    fn fresh_ids_are_distinct_version_4_uuids() {
        let ids: std::collections::HashSet<String> = (0..10_000).map(|_| fresh_uuid()).collect();
        assert_eq!(ids.len(), 10_000);
        let other_thread = std::thread::spawn(fresh_uuid).join().unwrap();
        assert!(!ids.contains(&other_thread));
        for id in ids.iter().take(100) {
            let u = uuid::Uuid::parse_str(id).unwrap();
            assert_eq!(u.get_version_num(), 4, "{id}");
            assert_eq!(u.get_variant(), uuid::Variant::RFC4122, "{id}");
            assert_eq!(id.len(), 36);
        }
    }
}
