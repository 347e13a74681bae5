//! The container fields read from a victim's cgroup path, on any path.
//!
//! Whatever the path, the reading ends (one pass), and what it gives is in the path: a unit is
//! one of its components, a container id 64 lowercase hex digits found in it, a pod uid in it
//! (with `-` or the systemd driver's `_`), with a QoS class the kubelet uses.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oomcount::notify::container::from_cgroup;

fuzz_target!(|data: &[u8]| {
    let path = String::from_utf8_lossy(data);
    let found = from_cgroup(&path);
    if let Some(unit) = &found.unit {
        assert!(
            path.split('/').any(|name| name == unit),
            "{unit:?} in {path:?}"
        );
    }
    if let Some(id) = &found.container_id {
        assert_eq!(id.len(), 64);
        assert!(
            id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
            "{id:?}"
        );
        assert!(path.contains(id.as_str()), "{id:?} in {path:?}");
    }
    if let Some(uid) = &found.pod_uid {
        assert!(
            path.contains(uid.as_str()) || path.contains(&uid.replace('-', "_")),
            "{uid:?} in {path:?}"
        );
        let qos = found.pod_qos.as_deref();
        assert!(
            matches!(qos, Some("guaranteed" | "burstable" | "besteffort")),
            "{qos:?}"
        );
    } else {
        assert_eq!(found.pod_qos, None);
    }
});
