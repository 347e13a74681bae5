//! Telling someone when the OOM killer strikes: a program run per kill or verdict change
//! ([`hooks`]), a structured journal entry per kill ([`journal`]), and the container a victim
//! belonged to, read from its cgroup path ([`container`]).
//!
//! Both outlets carry the same fields, built once per event as a [`Notice`]: each field of the
//! event's JSON becomes `OOMCOUNT_<NAME>`, so a field added to the event reaches the hook's
//! environment and the journal without an edit here. Names chosen by anyone (a victim's `comm`,
//! a cgroup's name) are arbitrary bytes that JSON can only carry lossily: the caller hands their
//! exact bytes over with [`Notice::exact`], and those are what the hook and the journal get.
pub mod container;
pub mod hooks;
pub mod journal;

use serde::Serialize;

/// The prefix of every field name: `OOMCOUNT_PID`, `OOMCOUNT_COMM`, ...
pub const PREFIX: &str = "OOMCOUNT_";

/// One event as name/value pairs (names `OOMCOUNT_...`, values exact bytes) and as JSON.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    fields: Vec<(String, Vec<u8>)>,
    json: String,
}

impl Notice {
    /// The fields of `event`'s JSON object: strings as they are, numbers in decimal, `true` as
    /// `1`, nested values as JSON; `null` and absent fields absent.
    pub fn new<T: Serialize>(event: &T) -> Self {
        let value = serde_json::to_value(event).unwrap_or_default();
        let json = value.to_string();
        let mut fields = Vec::new();
        if let serde_json::Value::Object(map) = value {
            for (key, value) in map {
                let bytes = match value {
                    serde_json::Value::Null => continue,
                    serde_json::Value::String(text) => text.into_bytes(),
                    serde_json::Value::Bool(flag) => if flag { "1" } else { "0" }.into(),
                    other => other.to_string().into_bytes(),
                };
                fields.push((field_name(&key), bytes));
            }
        }
        Self { fields, json }
    }

    /// Sets `OOMCOUNT_<key>` to exactly `bytes` (the victim's `comm` as the kernel had it, not its
    /// lossy UTF-8 form in the JSON); `None` leaves the field as the JSON had it.
    pub fn exact(mut self, key: &str, bytes: Option<&[u8]>) -> Self {
        if let Some(bytes) = bytes {
            self.set(key, bytes.to_vec());
        }
        self
    }

    /// Sets (or adds) `OOMCOUNT_<key>`.
    pub fn set(&mut self, key: &str, value: Vec<u8>) {
        let name = field_name(key);
        match self.fields.iter_mut().find(|(n, _)| *n == name) {
            Some((_, old)) => *old = value,
            None => self.fields.push((name, value)),
        }
    }

    /// The fields, `OOMCOUNT_...` names with exact values.
    pub fn fields(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.fields.iter().map(|(n, v)| (n.as_str(), v.as_slice()))
    }

    /// One field's value.
    pub fn get(&self, key: &str) -> Option<&[u8]> {
        let name = field_name(key);
        self.fields()
            .find(|(n, _)| *n == name)
            .map(|(_, value)| value)
    }

    /// The whole event as JSON (what `OOMCOUNT_EVENT` holds).
    pub fn json(&self) -> &str {
        &self.json
    }
}

/// `pod_uid` -> `OOMCOUNT_POD_UID`: only `A-Z`, `0-9` and `_`, as journald requires of field
/// names (and as any shell can read from its environment).
fn field_name(key: &str) -> String {
    let mut name = String::with_capacity(PREFIX.len() + key.len());
    name.push_str(PREFIX);
    name.extend(key.chars().map(|c| match c {
        'a'..='z' => c.to_ascii_uppercase(),
        'A'..='Z' | '0'..='9' => c,
        _ => '_',
    }));
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct Event {
        pid: u32,
        comm: Option<String>,
        #[serde(rename = "anon_rss_kb")]
        rss: u64,
        again: bool,
        absent: Option<u32>,
        nested: Vec<u8>,
    }

    #[test]
    fn fields_follow_the_json() {
        let event = Event {
            pid: 7,
            comm: Some("a\u{fffd}b".into()),
            rss: 12,
            again: true,
            absent: None,
            nested: vec![1, 2],
        };
        let notice = Notice::new(&event).exact("comm", Some(b"a\xffb"));
        assert_eq!(notice.get("pid"), Some(&b"7"[..]));
        assert_eq!(notice.get("anon_rss_kb"), Some(&b"12"[..]));
        assert_eq!(notice.get("again"), Some(&b"1"[..]));
        assert_eq!(notice.get("nested"), Some(&b"[1,2]"[..]));
        assert_eq!(notice.get("comm"), Some(&b"a\xffb"[..]));
        assert_eq!(notice.get("absent"), None);
        let names: Vec<&str> = notice.fields().map(|(n, _)| n).collect();
        assert!(names.contains(&"OOMCOUNT_ANON_RSS_KB"), "{names:?}");
        assert!(
            notice.json().contains(r#""comm":"a\ufffdb""#) || notice.json().contains("a\u{fffd}b")
        );
        assert_eq!(field_name("pod-uid.x"), "OOMCOUNT_POD_UID_X");
    }
}
