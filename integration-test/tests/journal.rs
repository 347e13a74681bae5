//! Kills as journal entries, from the daemon on real OOM kills. This machine runs no journald,
//! so the daemon is pointed (`OOMCOUNT_TEST_JOURNAL_SOCKET`) at a socket this test binds, and the
//! entry is parsed as journald parses its native protocol: every `OOMCOUNT_*` field must equal
//! the daemon's kill event (the victim's name byte-exact, a newline in it included), with the
//! fixed `MESSAGE_ID`, and the kill is not also a log line.
use std::{os::unix::net::UnixDatagram, time::Duration};

use oomcount::notify::journal::{self, MESSAGE_ID};
use oomcount_integration_test::{
    Daemon, MemCg, locate, producer, require_root, wait::time_scale, watchdog::Scratch,
};

#[test]
fn each_kill_is_one_journal_entry_with_the_events_fields() {
    require_root();
    let scratch = Scratch::new("oomcount-journal");
    std::fs::create_dir_all(scratch.dir()).unwrap();
    let (server, path) = journal::stand_in(scratch.dir()).expect("bind a stand-in journald");
    server
        .set_read_timeout(Some(Duration::from_secs(20) * time_scale()))
        .unwrap();
    let daemon = Daemon::start_env(&[], &[("OOMCOUNT_TEST_JOURNAL_SOCKET", path.as_os_str())]);
    let cg = MemCg::new("journal", 16 << 20);
    let name = b"pg\nMESSAGE=x\xff";
    let hex: String = name.iter().map(|b| format!("{b:02x}")).collect();
    let pid = producer::kill_one(&cg, &["--comm-hex", &hex]);
    let entry = entry_for(&server, pid);
    let out = std::process::Command::new(locate::oomcount())
        .args(["list", "--json", "--socket"])
        .arg(daemon.socket())
        .output()
        .unwrap();
    let events: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let event = events
        .iter()
        .find(|e| e["kind"] == "kill" && e["pid"] == pid)
        .expect("the kill in `list`");
    let get = |name: &str| -> &[u8] {
        let values: Vec<&Vec<u8>> = entry
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v)
            .collect();
        assert_eq!(values.len(), 1, "{name} once");
        values[0]
    };
    assert_eq!(get("MESSAGE_ID"), MESSAGE_ID.as_bytes());
    assert_eq!(get("SYSLOG_IDENTIFIER"), b"oomcount");
    for (key, value) in event.as_object().unwrap() {
        let field = format!("OOMCOUNT_{}", key.to_uppercase());
        let want: Vec<u8> = match (key.as_str(), value) {
            ("comm" | "trigger_comm", _) => name.to_vec(),
            (_, serde_json::Value::String(text)) => text.clone().into_bytes(),
            (_, serde_json::Value::Bool(true)) => b"1".to_vec(),
            (_, other) => other.to_string().into_bytes(),
        };
        assert_eq!(get(&field), want.as_slice(), "{field}");
    }
    let fields: Vec<&str> = entry.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        fields.iter().filter(|n| n.starts_with("OOMCOUNT_")).count(),
        event.as_object().unwrap().len(),
        "one field per field of the event: {fields:?}"
    );
    let message = String::from_utf8_lossy(get("MESSAGE")).into_owned();
    assert!(
        message.contains(&format!("kill pid {pid} (pg\\nMESSAGE=x")),
        "{message}"
    );
    assert!(
        !daemon.log().contains(&format!("kill pid {pid} ")),
        "the kill went to the journal, not also to the log: {}",
        daemon.log()
    );
}

/// The entry whose `OOMCOUNT_PID` is `pid` (the daemon sends nothing else here but kills).
fn entry_for(server: &UnixDatagram, pid: u32) -> Vec<(String, Vec<u8>)> {
    loop {
        let bytes = journal::receive(server).expect("an entry before the deadline");
        let entry = journal::parse(&bytes).expect("a well-formed entry");
        if entry
            .iter()
            .any(|(n, v)| n == "OOMCOUNT_PID" && v == pid.to_string().as_bytes())
        {
            return entry;
        }
    }
}
