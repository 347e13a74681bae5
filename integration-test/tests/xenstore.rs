//! oomcount's xenstore client against a real xenstored: Debian's oxenstored (Xen 4.17) on this
//! host, without a hypervisor (`oomcount_integration_test::xenstored` says how).
//!
//! Both modes share one store: the guest writer publishes reports (as dom0 and as "domain 5",
//! under its absolute home, since only a real guest can speak as a guest: the Xen VM test does
//! that), and dom0's listing and watch read them back. Also: transactions that conflict and are
//! run again, a watch event that arrives between a request and its reply, the longest value the
//! store takes, garbage in every key, and a stopped xenstored that must not hold up the
//! publisher's caller.
use std::time::{Duration, Instant};

use oomcount::xen::{
    client::{Client, Tx, XsError},
    guest::Publisher,
    guests::{self, Change, Watcher},
    report::{Constraint, Field, Health, KEYS, LastKill, Report, Vitals},
    wire::{Errno, PAYLOAD_MAX, WireError},
};
use oomcount_integration_test::{deadline, wait_until, xenstored::Xenstored};

/// oxenstored's default `quota-maxsize`: the longest value it stores.
const QUOTA_MAXSIZE: usize = 2048;

fn report(kills: u64) -> Report {
    Report {
        kills,
        kills_memcg: kills,
        kills_global: 0,
        marked: kills,
        events_dropped: 0,
        attached_at: 1_700_000_000,
        verdict: if kills > 2 {
            Health::Degraded
        } else {
            Health::Healthy
        },
        reason: if kills > 2 {
            "too many kills".into()
        } else {
            String::new()
        },
        last_kill: (kills > 0).then(|| LastKill {
            time: 1_700_000_100,
            pid: 4000 + kills as u32,
            comm: "hog".into(),
            constraint: Some(Constraint::Memcg),
            cgroup: "/oomtest".into(),
        }),
        vitals: Some(Vitals {
            mem_total_kb: 1 << 20,
            mem_available_kb: Some(1 << 19),
            swap_total_kb: 0,
            swap_free_kb: 0,
            psi_some_avg10: Some(0.25),
            psi_full_avg10: Some(0.0),
        }),
        updated_at: 1_700_000_200,
    }
}

/// The store, or `None` (said on stderr) where none can run.
fn start() -> Option<Xenstored> {
    if let Some(why) = oomcount_integration_test::xenstored::unavailable() {
        eprintln!("skipped: {why}");
        return None;
    }
    Some(Xenstored::start())
}

fn connect(store: &Xenstored) -> Client {
    Client::open(&store.socket()).expect("connect to oxenstored")
}

fn publisher(store: &Xenstored, base: &str) -> Publisher {
    Publisher::start(connect(store), base, Duration::from_millis(50)).expect("start the writer")
}

fn row(c: &mut Client, domid: u32) -> guests::GuestRow {
    guests::read_guest(c, domid).expect("read a guest")
}

#[test]
fn guest_and_dom0_modes_on_one_store() {
    let Some(store) = start() else { return };
    let mut dom0 = connect(&store);
    dom0.write(Tx::NONE, "/local/domain/0/name", b"Domain-0")
        .unwrap();
    dom0.write(Tx::NONE, "/local/domain/5/name", b"guest5")
        .unwrap();
    dom0.write(Tx::NONE, "/local/domain/6/name", b"bare")
        .unwrap();
    // dom0's own daemon writes relative to its home (/local/domain/0), a guest's to its own.
    let own = publisher(&store, "data/oomcount");
    let g5 = publisher(&store, "/local/domain/5/data/oomcount");
    own.publish(report(1));
    // A storm: many reports, coalesced into a few transactions, the last one written.
    for k in 0..=40 {
        g5.publish(report(k));
    }
    assert!(own.flush(Duration::from_secs(10)) && g5.flush(Duration::from_secs(10)));
    let (written, failed) = g5.stats();
    assert_eq!(failed, 0, "{}", store.output());
    assert!(
        written < 10,
        "41 reports made {written} transactions: not coalesced"
    );

    let rows = guests::list(&mut dom0, None).unwrap();
    let ids: Vec<u32> = rows.iter().map(|r| r.domid).collect();
    assert_eq!(ids, [0, 5, 6]);
    let p0 = rows[0].published.as_ref().expect("dom0 published");
    assert_eq!(p0.kills, Field::Valid(1));
    let p5 = rows[1].published.as_ref().expect("guest 5 published");
    assert_eq!(rows[1].name, Field::Valid("guest5".into()));
    assert_eq!(p5.kills, Field::Valid(40));
    assert_eq!(p5.verdict, Field::Valid(Health::Degraded));
    assert_eq!(p5.last_kill_comm, Field::Valid("hog".into()));
    assert_eq!(p5.last_kill_pid, Field::Valid(4040));
    assert_eq!(p5.mem_available_kb, Field::Valid(1 << 19));
    assert_eq!(p5.seq, Field::Valid(written));
    assert!(p5.invalid_keys().is_empty());
    assert_eq!(rows[2].published, None, "domain 6 runs no oomcount");
    // The nodes a report takes: data/oomcount and one per key.
    let nodes = dom0
        .directory(Tx::NONE, "/local/domain/5/data/oomcount")
        .unwrap();
    assert_eq!(nodes.len(), KEYS.len());
    let json = rows[1].to_json(1_700_000_210);
    assert_eq!(json["kills"], 40);
    assert_eq!(json["last_kill"]["comm"], "hog");
    assert_eq!(json["stale_s"], 10);
    let table = guests::table(&rows, 1_700_000_210);
    assert!(
        table.contains("guest5") && table.contains("no oomcount"),
        "{table}"
    );

    // dom0's own row from the local daemon replaces domain 0's entry.
    let mine = guests::GuestRow {
        domid: 0,
        name: Field::Valid("Domain-0".into()),
        published: Some(oomcount::xen::report::Published::from_report(&report(7), 1)),
    };
    let rows = guests::list(&mut dom0, Some(mine)).unwrap();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0].published.as_ref().unwrap().kills, Field::Valid(7));
}

#[test]
fn conflicting_transactions_are_run_again() {
    let Some(store) = start() else { return };
    let mut a = connect(&store);
    let mut b = connect(&store);
    a.write(Tx::NONE, "/t/n", b"0").unwrap();
    let mut runs = 0;
    let value = a
        .transaction(|a, tx| {
            runs += 1;
            let v: u64 = String::from_utf8(a.read(tx, "/t/n")?)
                .unwrap()
                .parse()
                .unwrap();
            if runs == 1 {
                // Another writer changes the node inside our transaction: the commit conflicts.
                b.write(Tx::NONE, "/t/n", b"10").unwrap();
            }
            a.write(tx, "/t/n", (v + 1).to_string().as_bytes())?;
            Ok(v + 1)
        })
        .unwrap();
    assert_eq!((runs, a.conflicts()), (2, 1));
    assert_eq!(value, 11);
    assert_eq!(a.read(Tx::NONE, "/t/n").unwrap(), b"11");

    // A transaction that never stops conflicting gives up with EAGAIN.
    let mut runs = 0;
    let err = a
        .transaction(|a, tx| {
            runs += 1;
            let _ = a.read(tx, "/t/n")?;
            b.write(Tx::NONE, "/t/n", format!("b{runs}").as_bytes())
                .unwrap();
            a.write(tx, "/t/n", b"y")
        })
        .unwrap_err();
    assert_eq!(err.errno(), Some(&Errno::Again), "{err}");
    assert_eq!(runs, oomcount::xen::client::TRANSACTION_TRIES);
}

#[test]
fn watch_event_between_request_and_reply() {
    let Some(store) = start() else { return };
    let mut a = connect(&store);
    let mut b = connect(&store);
    a.write(Tx::NONE, "/w/other", b"1").unwrap();
    a.watch("/w/seq", "tok").unwrap();
    // The first event comes with the watch; take it.
    let first = a.wait_event(Some(Duration::from_secs(5))).unwrap().unwrap();
    assert_eq!(first.path, "/w/seq");
    // b's write fires the watch before b has its reply: the event is on a's socket before a
    // sends its next request, so it arrives before that request's reply.
    b.write(Tx::NONE, "/w/seq", b"2").unwrap();
    assert_eq!(a.queued_events(), 0);
    assert_eq!(a.read(Tx::NONE, "/w/other").unwrap(), b"1");
    assert_eq!(
        a.queued_events(),
        1,
        "the event came before the read's reply"
    );
    let ev = a.wait_event(Some(Duration::ZERO)).unwrap();
    let ev = ev.expect("the event that came before the reply was kept");
    assert_eq!((ev.path.as_str(), ev.token.as_str()), ("/w/seq", "tok"));
    assert_eq!(a.wait_event(Some(Duration::from_millis(50))).unwrap(), None);
}

#[test]
fn longest_value_and_garbage_in_every_key() {
    let Some(store) = start() else { return };
    let mut dom0 = connect(&store);
    let good = publisher(&store, "/local/domain/5/data/oomcount");
    good.publish(report(2));
    assert!(good.flush(Duration::from_secs(10)));

    // The longest value one message carries (the payload is the path, a NUL and the value):
    // oxenstored refuses it by its quota of 2048 bytes a value, in one errno; the longest value
    // it takes reads back whole; one byte more than a message holds never leaves the client.
    let base = "/local/domain/9/data/oomcount";
    let path = format!("{base}/last_kill_comm");
    let longest = vec![b'a'; PAYLOAD_MAX - path.len() - 1];
    let refused = dom0.write(Tx::NONE, &path, &longest).unwrap_err();
    assert_eq!(refused.errno(), Some(&Errno::TooBig), "{refused}");
    let quota = vec![b'a'; QUOTA_MAXSIZE];
    dom0.write(Tx::NONE, &path, &quota).unwrap();
    assert_eq!(dom0.read(Tx::NONE, &path).unwrap(), quota);
    let too_long = vec![b'a'; longest.len() + 1];
    assert!(matches!(
        dom0.write(Tx::NONE, &path, &too_long),
        Err(XsError::Wire(WireError::RequestTooLong(_)))
    ));

    // Garbage in every key of domain 7, its name included.
    // Each is wrong for any key: a number out of range or with a sign, an exponent, text with
    // a terminal's escape or not UTF-8, a verdict with a newline.
    let garbage: [&[u8]; 6] = [
        b"\xff\xfe\xfd",
        b"-1\n",
        b"99999999999999999999999\r",
        b"\x1b[2J\x07",
        b"1e3\t",
        b"healthy\n",
    ];
    let g7 = "/local/domain/7";
    dom0.write(Tx::NONE, &format!("{g7}/name"), b"\x1b]0;pwned\x07")
        .unwrap();
    for (i, key) in KEYS.iter().enumerate() {
        let value = garbage[i % garbage.len()];
        dom0.write(Tx::NONE, &format!("{g7}/data/oomcount/{key}"), value)
            .unwrap();
    }
    // And a node with the name of a key holding children, and many keys nobody reads.
    for i in 0..200 {
        dom0.write(Tx::NONE, &format!("{g7}/data/oomcount/junk{i}"), b"x")
            .unwrap();
    }
    let rows = guests::list(&mut dom0, None).unwrap();
    let r7 = rows.iter().find(|r| r.domid == 7).unwrap();
    assert!(r7.name.is_invalid());
    let p7 = r7.published.as_ref().unwrap();
    assert_eq!(p7.invalid_keys().len(), KEYS.len(), "{p7:?}");
    let json = r7.to_json(0);
    assert_eq!(json["valid"], false);
    assert_eq!(json["kills"], serde_json::Value::Null);
    assert!(guests::table(&rows, 0).contains("invalid"));
    // The others stay right.
    let r5 = rows.iter().find(|r| r.domid == 5).unwrap();
    assert_eq!(r5.published.as_ref().unwrap().kills, Field::Valid(2));
    assert!(r5.published.as_ref().unwrap().invalid_keys().is_empty());
    let r9 = rows.iter().find(|r| r.domid == 9).unwrap();
    let p9 = r9.published.as_ref().unwrap();
    assert_eq!(p9.last_kill_comm, Field::Invalid("too long"));
    assert_eq!(p9.invalid_keys(), ["last_kill_comm"]);
}

#[test]
fn watch_follows_each_guest_seq() {
    let Some(store) = start() else { return };
    let mut dom0 = connect(&store);
    dom0.write(Tx::NONE, "/local/domain/5/name", b"guest5")
        .unwrap();
    let mut w = Watcher::start(&mut dom0).unwrap();
    let appeared = w.sync(&mut dom0).unwrap();
    assert!(
        matches!(&appeared[..], [Change::Appeared(r)] if r.domid == 5 && r.published.is_none()),
        "{appeared:?}"
    );
    let g5 = publisher(&store, "/local/domain/5/data/oomcount");
    g5.publish(report(3));
    let changed = wait_until(
        deadline(Duration::from_secs(10)),
        "a change of guest 5",
        || {
            let changes = w.next(&mut dom0, Some(Duration::from_millis(200))).unwrap();
            changes
                .into_iter()
                .find_map(|c| match c {
                    Change::Changed(r)
                        if r.published
                            .as_ref()
                            .is_some_and(|p| p.kills == Field::Valid(3)) =>
                    {
                        Some(r)
                    }
                    _ => None,
                })
                .ok_or("no change yet")
        },
    );
    assert_eq!(changed.domid, 5);
    let line = Change::Changed(changed).line(true, 1_700_000_200);
    assert!(
        line.contains(r#""change":"changed""#) && line.contains(r#""kills":3"#),
        "{line}"
    );
    // The domain goes away (its home removed, as the toolstack does on destroy).
    dom0.rm(Tx::NONE, "/local/domain/5").unwrap();
    let gone = wait_until(deadline(Duration::from_secs(10)), "guest 5 gone", || {
        let changes = w.next(&mut dom0, Some(Duration::from_millis(200))).unwrap();
        changes
            .into_iter()
            .find(|c| matches!(c, Change::Gone(5)))
            .ok_or("not gone yet")
    });
    assert_eq!(gone, Change::Gone(5));
    assert_eq!(w.rows().count(), 0);
}

#[test]
fn a_stopped_xenstored_never_holds_up_the_caller() {
    let Some(store) = start() else { return };
    let mut client = connect(&store);
    client.set_timeout(Duration::from_millis(500));
    let g = Publisher::start(
        client,
        "/local/domain/5/data/oomcount",
        Duration::from_millis(50),
    )
    .unwrap();
    g.publish(report(1));
    assert!(g.flush(Duration::from_secs(10)));
    let pid = nix::unistd::Pid::from_raw(store.pid() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    // The caller (the daemon's runtime thread) hands reports over while the store is stopped:
    // each returns at once; the writer's own thread waits and times out.
    let start = Instant::now();
    for k in 2..1000 {
        g.publish(report(k));
    }
    let handed = start.elapsed();
    wait_until(deadline(Duration::from_secs(10)), "a failed write", || {
        if g.stats().1 > 0 {
            Ok(())
        } else {
            Err(g.stats())
        }
    });
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    // After a failure the next report is written whole, on a new connection's worth of state.
    g.publish(report(1234));
    assert!(g.flush(Duration::from_secs(10)));
    let mut dom0 = connect(&store);
    let r = row(&mut dom0, 5);
    eprintln!("1000 reports handed over in {handed:?} while xenstored was stopped");
    assert_eq!(r.published.unwrap().kills, Field::Valid(1234));
}

/// The real daemon with `[xenstore] mode = "on"`, reaching the host's oxenstored through
/// `$XENSTORED_PATH`: as a dom0 connection it publishes under `/local/domain/0/data/oomcount`.
/// Its kills there must equal the kernel's, and `oomcount guests --json` must list it (from the
/// daemon) and a guest (from the store).
#[test]
fn the_daemon_publishes_its_kills_and_guests_lists_them() {
    use oomcount_integration_test::{Daemon, MemCg, Watch, producer, require_root};
    require_root();
    let Some(store) = start() else { return };
    let dir = std::env::temp_dir().join(format!("oomcount-xs-daemon-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("oomcount.toml");
    std::fs::write(&config, "[xenstore]\nmode = \"on\"\ninterval = \"1s\"\n").unwrap();
    let socket = store.socket();
    let daemon = Daemon::start_env(
        &["--config".as_ref(), config.as_os_str()],
        &[("XENSTORED_PATH", socket.as_os_str())],
    );
    let cg = MemCg::new("xenstore", 32 << 20);
    let watch = Watch::new(Some(&daemon));
    producer::single_kills(&cg, 5);
    let d = watch.settle("the daemon to count 5 kills", |d| d.kills() >= 5);
    assert_eq!(
        d.vmstat, 5,
        "/proc/vmstat oom_kill delta (another OOM on this machine?)"
    );
    let mut dom0 = connect(&store);
    let published = wait_until(
        deadline(Duration::from_secs(10)),
        "5 kills in xenstore",
        || {
            let p = row(&mut dom0, 0).published;
            match p {
                Some(p) if p.kills == Field::Valid(5) => Ok(p),
                other => Err(other.map(|p| p.kills)),
            }
        },
    );
    assert_eq!(published.kills_memcg, Field::Valid(5));
    assert_eq!(
        published.last_kill_constraint,
        Field::Valid(Some(Constraint::Memcg))
    );
    assert!(published.last_kill_comm.valid().is_some(), "{published:?}");
    assert!(
        published.mem_total_kb.valid().is_some_and(|kb| *kb > 0),
        "{published:?}"
    );
    assert!(published.invalid_keys().is_empty(), "{published:?}");

    // dom0's view: its own row from the daemon, a guest's from the store.
    dom0.write(Tx::NONE, "/local/domain/5/name", b"guest5")
        .unwrap();
    let g5 = publisher(&store, "/local/domain/5/data/oomcount");
    g5.publish(report(2));
    assert!(g5.flush(Duration::from_secs(10)));
    let out = std::process::Command::new(oomcount_integration_test::locate::oomcount())
        .args(["guests", "--json", "--socket"])
        .arg(daemon.socket())
        .env("XENSTORED_PATH", &socket)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows[0]["domid"], 0);
    assert_eq!(rows[0]["kills"], 5);
    assert_eq!(rows[1]["domid"], 5);
    assert_eq!(rows[1]["name"], "guest5");
    assert_eq!(rows[1]["kills"], 2);
    assert_eq!(rows.as_array().unwrap().len(), 2, "{rows}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// No xenstore: `mode = "on"` stops the daemon in one line; `guests` says so and exits 1.
#[test]
fn no_xenstore_is_one_line() {
    let dir = std::env::temp_dir().join(format!("oomcount-xs-none-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("oomcount.toml");
    std::fs::write(&config, "[xenstore]\nmode = \"on\"\n").unwrap();
    let bin = oomcount_integration_test::locate::oomcount();
    let nowhere = dir.join("no-socket");
    let out = std::process::Command::new(&bin)
        .args(["guests"])
        .env("XENSTORED_PATH", &nowhere)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("no xenstore answers here"), "{err}");
    let out = std::process::Command::new(&bin)
        .args(["daemon", "--no-pin", "--socket"])
        .arg(dir.join("s"))
        .arg("--config")
        .arg(&config)
        .env("XENSTORED_PATH", &nowhere)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("[xenstore] mode = \"on\""), "{err}");
    assert!(
        !err.contains("attached"),
        "stopped before the probe was attached: {err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// One HTTP/1.0 GET of `/metrics`: the body of a 200.
fn scrape(addr: std::net::SocketAddr) -> Result<String, String> {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    write!(stream, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .map_err(|e| e.to_string())?;
    match answer.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200") => Ok(body.to_owned()),
        _ => Err(format!("not a 200: {answer:?}")),
    }
}

/// dom0 with `[metrics]` on: the daemon (reaching the store through xenstored's socket, as dom0
/// does) exports each guest's published count and verdict with its `domain` label, a guest
/// whose values are garbage only as `oomcount_guest_report_valid 0`, a guest's new count as it
/// publishes it (its `seq` watched), and none of a domain once it is gone; in the textfile too.
#[test]
fn dom0_exports_every_guest_in_its_metrics() {
    use oomcount_integration_test::{Daemon, require_root};
    require_root();
    let Some(store) = start() else { return };
    let mut dom0 = connect(&store);
    // A name that tries to break out of its label.
    let name = "web\"1\\";
    dom0.write(Tx::NONE, "/local/domain/3/name", name.as_bytes())
        .unwrap();
    let g3 = publisher(&store, "/local/domain/3/data/oomcount");
    let mut r = report(7);
    r.verdict = Health::Healthy;
    g3.publish(r.clone());
    assert!(g3.flush(Duration::from_secs(10)));
    dom0.write(Tx::NONE, "/local/domain/4/name", b"junk")
        .unwrap();
    for key in KEYS {
        dom0.write(
            Tx::NONE,
            &format!("/local/domain/4/data/oomcount/{key}"),
            b"\xff-1\x1b",
        )
        .unwrap();
    }
    dom0.write(Tx::NONE, "/local/domain/6/name", b"bare")
        .unwrap();

    let dir = std::env::temp_dir().join(format!("oomcount-xs-metrics-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let textfile = dir.join("oomcount.prom");
    let config = dir.join("oomcount.toml");
    std::fs::write(
        &config,
        format!(
            "[xenstore]\nmode = \"on\"\ninterval = \"1s\"\n\n[metrics]\nlisten = \"{addr}\"\ntextfile = {textfile:?}\n"
        ),
    )
    .unwrap();
    let socket = store.socket();
    let daemon = Daemon::start_env(
        &["--config".as_ref(), config.as_os_str()],
        &[("XENSTORED_PATH", socket.as_os_str())],
    );
    let labels = r#"domain="web\"1\\",domid="3""#;
    let kills = |n: u64| format!("oomcount_guest_oom_kills_total{{{labels}}} {n}\n");
    let wanted = [
        kills(7),
        format!("oomcount_guest_report_valid{{{labels}}} 1\n"),
        format!("oomcount_guest_verdict{{{labels},state=\"healthy\"}} 1\n"),
        format!("oomcount_guest_verdict{{{labels},state=\"degraded\"}} 0\n"),
        "oomcount_guest_report_valid{domain=\"junk\",domid=\"4\"} 0\n".to_owned(),
    ];
    let text = wait_until(
        deadline(Duration::from_secs(20)),
        "the guests in /metrics",
        || {
            let text = scrape(addr)?;
            match wanted.iter().find(|w| !text.contains(w.as_str())) {
                None => Ok(text),
                Some(w) => Err(format!("no {w:?} yet in:\n{text}\n{}", daemon.log())),
            }
        },
    );
    assert!(
        !text.contains("oom_kills_total{domain=\"junk\"")
            && !text.contains("verdict{domain=\"junk\""),
        "the garbage guest has no count:\n{text}"
    );
    assert!(!text.contains("domid=\"6\""), "no oomcount in 6:\n{text}");
    assert!(
        !text.contains("domid=\"0\""),
        "dom0 is not a guest:\n{text}"
    );
    // The textfile says the same, rewritten for the guests alone (no kill here).
    wait_until(
        deadline(Duration::from_secs(10)),
        "the guests in the textfile",
        || {
            let t = std::fs::read_to_string(&textfile).map_err(|e| e.to_string())?;
            t.contains(&kills(7)).then_some(()).ok_or(t)
        },
    );

    // The guest publishes again: its series follows (a watch on its seq, no timer).
    r.kills = 8;
    g3.publish(r);
    assert!(g3.flush(Duration::from_secs(10)));
    wait_until(
        deadline(Duration::from_secs(10)),
        "8 kills in /metrics",
        || {
            let text = scrape(addr)?;
            text.contains(&kills(8)).then_some(()).ok_or(text)
        },
    );
    wait_until(
        deadline(Duration::from_secs(10)),
        "8 kills in the textfile",
        || {
            let t = std::fs::read_to_string(&textfile).map_err(|e| e.to_string())?;
            t.contains(&kills(8)).then_some(()).ok_or(t)
        },
    );
    // The domain goes away (its home removed, as the toolstack does on destroy: its seq's watch
    // fires).
    dom0.rm(Tx::NONE, "/local/domain/3").unwrap();
    wait_until(deadline(Duration::from_secs(10)), "guest 3 gone", || {
        let text = scrape(addr)?;
        (!text.contains("domid=\"3\"")).then_some(()).ok_or(text)
    });
    drop(daemon);
    let _ = std::fs::remove_dir_all(&dir);
}
