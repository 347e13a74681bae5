//! The container a victim ran in, read from its cgroup path alone.
//!
//! Runtimes name the cgroups they create after what they run: systemd a unit (`nginx.service`,
//! `session-3.scope`), Docker, containerd, CRI-O and Podman a 64-hex container id (bare under
//! the cgroupfs driver, `docker-<id>.scope`, `cri-containerd-<id>.scope`, `crio-<id>.scope`,
//! `libpod-<id>.scope` under the systemd driver), and the kubelet a pod (`pod<uid>` under
//! `kubepods/<qos>/`, or `kubepods-<qos>-pod<uid with _>.slice` under `kubepods.slice`). The same
//! names appear in the v1 memory controller's hierarchy and in cgroup2, possibly below a prefix
//! (kind, k3s, a nested runtime), so each path component is judged by itself.
//!
//! The kernel record carries each level's name in [`oomcount_common::CGROUP_NAME`] bytes, so a
//! longer name arrives cut to [`NAME_MAX`] bytes (with 64-byte names, `docker-<id>.scope`, 77
//! bytes, lost the end of its id, `kubepods-burstable-pod<uid>.slice`, 64, its last letter). A
//! cut name gives what it still holds whole (a pod uid before its cut `.slice`), never a part
//! of an id.
//!
//! Pure: no file is read, nothing is asked of a runtime (the victim is gone by the time anyone
//! could ask). The work is one pass over the path's bytes, whatever they are. A path that shows
//! none of these leaves every field absent: nothing is guessed.
use serde::{Deserialize, Serialize};

/// What a victim's cgroup path tells about its container; every field absent when unknown.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Container {
    /// The innermost systemd unit (`nginx.service`, `docker-<id>.scope`, `session-3.scope`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub unit: Option<String>,
    /// A Docker, containerd, CRI-O or Podman container id (64 lowercase hex digits).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub container_id: Option<String>,
    /// A Kubernetes pod's uid, with dashes (`_` in systemd slice names turned back to `-`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub pod_uid: Option<String>,
    /// The pod's QoS class: `guaranteed`, `burstable` or `besteffort`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub pod_qos: Option<String>,
}

impl Container {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// The longest name a level of the kernel's record holds: a name this long may have been cut.
pub const NAME_MAX: usize = oomcount_common::CGROUP_NAME - 1;

/// Runtime prefixes of a container's cgroup name; the conmon monitors' own scopes
/// (`crio-conmon-<id>`, `libpod-conmon-<id>`) are not containers and fail the id check.
const RUNTIME_PREFIXES: [&str; 5] = [
    "docker-",
    "cri-containerd-",
    "crio-",
    "libpod-",
    "containerd-",
];

/// Reads the container fields from a victim's cgroup path (`/system.slice/nginx.service`).
pub fn from_cgroup(path: &str) -> Container {
    let mut found = Container::default();
    // `kubepods` seen as the previous component (cgroupfs layout), or the QoS it named.
    let mut kube: Option<&'static str> = None;
    for name in path.split('/') {
        if let Some(id) = container_id(name) {
            found.container_id = Some(id.to_owned());
        }
        if let Some(unit) = unit(name) {
            found.unit = Some(unit.to_owned());
        }
        if let Some((uid, qos)) = pod(name, kube) {
            found.pod_uid = Some(uid);
            found.pod_qos = Some(qos.to_owned());
        }
        kube = match (name, kube) {
            ("kubepods", _) => Some("guaranteed"),
            ("burstable", Some("guaranteed")) => Some("burstable"),
            ("besteffort", Some("guaranteed")) => Some("besteffort"),
            _ => None,
        };
    }
    found
}

/// A systemd unit name: a service or a scope (slices hold units, they are not where one runs).
fn unit(name: &str) -> Option<&str> {
    let stem = name
        .strip_suffix(".service")
        .or_else(|| name.strip_suffix(".scope"))?;
    (!stem.is_empty() && name.len() <= 256 && !name.bytes().any(|b| b.is_ascii_control()))
        .then_some(name)
}

/// A container id in one cgroup name: bare, runtime-prefixed, with or without `.scope`.
fn container_id(name: &str) -> Option<&str> {
    let name = name.strip_suffix(".scope").unwrap_or(name);
    let id = RUNTIME_PREFIXES
        .iter()
        .find_map(|prefix| name.strip_prefix(prefix))
        .unwrap_or(name);
    (id.len() == 64 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))).then_some(id)
}

/// A pod's cgroup: `pod<uid>` right below `kubepods[/<qos>]` (cgroupfs), or
/// `kubepods[-<qos>]-pod<uid>.slice` (systemd, `-` in the uid written `_`).
fn pod(name: &str, kube: Option<&'static str>) -> Option<(String, &'static str)> {
    let (uid, qos, separator) = if let Some(slice) = name
        .strip_prefix("kubepods-")
        .and_then(|rest| strip_slice(rest, name.len()))
    {
        if let Some(uid) = slice.strip_prefix("burstable-pod") {
            (uid, "burstable", b'_')
        } else if let Some(uid) = slice.strip_prefix("besteffort-pod") {
            (uid, "besteffort", b'_')
        } else {
            (slice.strip_prefix("pod")?, "guaranteed", b'_')
        }
    } else {
        (name.strip_prefix("pod")?, kube?, b'-')
    };
    pod_uid(uid, separator).then(|| (uid.replace('_', "-"), qos))
}

/// A pod uid as the kubelet writes it: a UUID (8-4-4-4-12 hex digits; `-` under the cgroupfs
/// driver, `_` in systemd's slice names), or, for a static pod, a 32-hex hash of its manifest.
fn pod_uid(uid: &str, separator: u8) -> bool {
    let hex = |part: &[u8]| part.iter().all(u8::is_ascii_hexdigit);
    if uid.len() == 32 {
        return hex(uid.as_bytes());
    }
    let parts: Vec<&[u8]> = uid.as_bytes().split(|&b| b == separator).collect();
    parts.len() == 5
        && parts
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(part, len)| part.len() == len && hex(part))
}

/// `rest` without its `.slice`, or without the start of `.slice` the kernel's record left when
/// it cut the name (of `len` bytes) at [`NAME_MAX`].
fn strip_slice(rest: &str, len: usize) -> Option<&str> {
    if let Some(stem) = rest.strip_suffix(".slice") {
        return Some(stem);
    }
    if len != NAME_MAX {
        return None;
    }
    (0..".slice".len())
        .rev()
        .find_map(|cut| rest.strip_suffix(&".slice"[..cut]))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOCKER: &str = "3726184226f5d3147c25fdeab5b60097e378e8a720503a5e19ecfdf29f869860";
    const CENTOS: &str = "9ec39b91f3d70e1beff50a308f77067065ea6be0d91a3378375056cd4422cf3d";
    const K8S: &str = "34dc0b5e626f2c5c4c5170e34b10e7654ce36f0fcd532739f4445baabea03376";
    const POD: &str = "74c13223-5a00-11e9-b385-42010a80018d";

    fn c(unit: Option<&str>, id: Option<&str>, pod: Option<&str>, qos: Option<&str>) -> Container {
        Container {
            unit: unit.map(Into::into),
            container_id: id.map(Into::into),
            pod_uid: pod.map(Into::into),
            pod_qos: qos.map(Into::into),
        }
    }

    /// Paths as runtimes write them (ids from public `/proc/<pid>/cgroup` test fixtures:
    /// Datadog's container-tagging cases, NeuVector's cgroup tests, Qard/container-info), in the
    /// v1 memory controller's hierarchy and in cgroup2.
    #[test]
    fn real_paths_from_each_runtime() {
        let d = Some(DOCKER);
        let k = Some(K8S);
        let pod = Some(POD);
        let table: Vec<(String, Container)> = vec![
            // systemd services and sessions (v1 memory and cgroup2 look the same).
            (
                "/system.slice/nginx.service".into(),
                c(Some("nginx.service"), None, None, None),
            ),
            (
                "/user.slice/user-1000.slice/session-3.scope".into(),
                c(Some("session-3.scope"), None, None, None),
            ),
            (
                "/user.slice/user-1000.slice/user@1000.service/app.slice/app-firefox-1234.scope"
                    .into(),
                c(Some("app-firefox-1234.scope"), None, None, None),
            ),
            // A delegated service's own sub-cgroup: the unit is still the service.
            (
                "/system.slice/postgresql@15-main.service/workers".into(),
                c(Some("postgresql@15-main.service"), None, None, None),
            ),
            // Docker, cgroupfs driver (v1 and v2), and systemd driver.
            (format!("/docker/{DOCKER}"), c(None, d, None, None)),
            (
                format!("/system.slice/docker-{CENTOS}.scope"),
                c(
                    Some(&format!("docker-{CENTOS}.scope")),
                    Some(CENTOS),
                    None,
                    None,
                ),
            ),
            // Podman: systemd (root and rootless, with its `container` sub-cgroup) and cgroupfs.
            (
                format!("/machine.slice/libpod-{DOCKER}.scope"),
                c(Some(&format!("libpod-{DOCKER}.scope")), d, None, None),
            ),
            (
                format!(
                    "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{DOCKER}.scope/container"
                ),
                c(Some(&format!("libpod-{DOCKER}.scope")), d, None, None),
            ),
            (
                format!("/libpod_parent/libpod-{DOCKER}"),
                c(None, d, None, None),
            ),
            // Podman's monitor is not the container.
            (
                format!("/machine.slice/libpod-conmon-{DOCKER}.scope"),
                c(
                    Some(&format!("libpod-conmon-{DOCKER}.scope")),
                    None,
                    None,
                    None,
                ),
            ),
            // Kubernetes, cgroupfs driver (v1 and v2): QoS directories, guaranteed has none.
            (
                format!("/kubepods/besteffort/pod{POD}/{K8S}"),
                c(None, k, pod, Some("besteffort")),
            ),
            (
                format!("/kubepods/burstable/pod{POD}/{K8S}"),
                c(None, k, pod, Some("burstable")),
            ),
            (
                format!("/kubepods/pod{POD}/{K8S}"),
                c(None, k, pod, Some("guaranteed")),
            ),
            (
                format!("/kubepods/besteffort/pod{POD}/crio-{K8S}"),
                c(None, k, pod, Some("besteffort")),
            ),
            // Kubernetes, systemd driver: containerd, CRI-O, dockershim.
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{K8S}.scope",
                    POD.replace('-', "_")
                ),
                c(
                    Some(&format!("cri-containerd-{K8S}.scope")),
                    k,
                    pod,
                    Some("burstable"),
                ),
            ),
            (
                format!(
                    "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/crio-{K8S}.scope",
                    POD.replace('-', "_")
                ),
                c(
                    Some(&format!("crio-{K8S}.scope")),
                    k,
                    pod,
                    Some("besteffort"),
                ),
            ),
            (
                format!(
                    "/kubepods.slice/kubepods-pod{}.slice/docker-{K8S}.scope",
                    POD.replace('-', "_")
                ),
                c(
                    Some(&format!("docker-{K8S}.scope")),
                    k,
                    pod,
                    Some("guaranteed"),
                ),
            ),
            // A static pod (uid: a 32-hex hash), and kind's node container around it all.
            (
                format!(
                    "/docker/{DOCKER}/kubepods/burstable/pod5b8f4c0d3e6a0d0c5e7b4e1b7c5d8d1e/{K8S}"
                ),
                c(
                    None,
                    k,
                    Some("5b8f4c0d3e6a0d0c5e7b4e1b7c5d8d1e"),
                    Some("burstable"),
                ),
            ),
        ];
        for (path, want) in table {
            assert_eq!(from_cgroup(&path), want, "{path}");
        }
    }

    /// Paths as the kernel's record carries them on this build: each name cut to NAME_MAX
    /// bytes. A pod uid survives; a container id cut short is no id.
    #[test]
    fn names_cut_by_the_kernel_record() {
        let cut = |path: &str| -> String {
            path.split('/')
                .map(|name| &name[..name.len().min(NAME_MAX)])
                .collect::<Vec<_>>()
                .join("/")
        };
        let pod = POD.replace('-', "_");
        for (qos, slice) in [
            ("burstable", format!("kubepods-burstable-pod{pod}.slice")),
            ("besteffort", format!("kubepods-besteffort-pod{pod}.slice")),
            ("guaranteed", format!("kubepods-pod{pod}.slice")),
        ] {
            let path = cut(&format!(
                "/kubepods.slice/kubepods-{qos}.slice/{slice}/cri-containerd-{K8S}.scope"
            ));
            let found = from_cgroup(&path);
            assert_eq!(found.pod_uid.as_deref(), Some(POD), "{path}");
            assert_eq!(found.pod_qos.as_deref(), Some(qos), "{path}");
            if NAME_MAX < 64 {
                assert_eq!(found.container_id, None, "{path}");
                assert_eq!(found.unit, None, "{path}");
            }
        }
        // A uid with both separators, or the wrong one for its driver, or misshapen: no pod.
        for path in [
            format!("/kubepods-pod{}.slice", POD.replacen('-', "_", 2)),
            format!("/kubepods-pod{POD}.slice"),
            format!("/kubepods/pod{pod}"),
            "/kubepods/pod74c13223a-5a0-11e9-b385-42010a80018d".to_owned(),
        ] {
            assert!(from_cgroup(&path).is_empty(), "{path}");
        }
        // Not cut, but short of its `.slice`: no pod.
        assert!(from_cgroup(&format!("/kubepods-pod{pod}.sli")).is_empty());
        assert!(
            from_cgroup(&cut(&format!("/docker/{DOCKER}")))
                .container_id
                .is_none()
                || NAME_MAX >= 64
        );
    }

    #[test]
    fn paths_that_match_nothing_give_nothing() {
        for path in [
            "/",
            "",
            "/oomcount-test/hog",
            "/system.slice",
            "/user.slice/user-1000.slice",
            "/.scope/.service",
            "/docker/abc123",
            "/docker/3726184226F5D3147C25FDEAB5B60097E378E8A720503A5E19ECFDF29F869860",
            "/pod74c13223-5a00-11e9-b385-42010a80018d",
            "/kubepods/burstable/podnot-a-uid",
            "/kubepods/other/pod74c13223-5a00-11e9-b385-42010a80018d",
            "/.../leaf",
            "/a\nb.service",
        ] {
            let found = from_cgroup(path);
            assert!(found.is_empty(), "{path:?} gave {found:?}");
            assert_eq!(serde_json::to_string(&found).unwrap(), "{}");
        }
    }

    #[test]
    fn hostile_paths_take_one_pass() {
        // 1 MiB of near misses: each component is judged once, in its own length.
        let near = format!("/kubepods/burstable/pod{}", "a".repeat(35));
        let path = near.repeat((1 << 20) / near.len());
        assert!(from_cgroup(&path).is_empty());
        let slashes = "/".repeat(1 << 20);
        assert!(from_cgroup(&slashes).is_empty());
        let long = "x".repeat(1 << 20) + ".service";
        assert!(
            from_cgroup(&long).is_empty(),
            "a unit name longer than systemd allows"
        );
        assert!(from_cgroup("/ü/é.scope/д").unit.as_deref() == Some("é.scope"));
    }
}
