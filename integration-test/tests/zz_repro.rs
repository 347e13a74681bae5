//! TEMPORARY reproduction (not for commit): does the daemon miss marks while its map is read?
use std::{io::{BufRead, BufReader, Write}, os::unix::net::UnixStream, sync::{Arc, atomic::{AtomicBool, AtomicU64, Ordering}}};
use oomcount_integration_test::{Daemon, MemCg, Watch, producer, require_root};

fn run(hammer: bool) {
    let daemon = Daemon::start();
    let parent = MemCg::new("repro", 64 << 20);
    let groups: Vec<MemCg> = (0..4).map(|i| parent.child(&format!("p{i}"), Some(4 << 20))).collect();
    let watch = Watch::new(Some(&daemon));
    let stop = Arc::new(AtomicBool::new(false));
    let asked = Arc::new(AtomicU64::new(0));
    let t = hammer.then(|| {
        let (stop, asked, socket) = (stop.clone(), asked.clone(), daemon.socket().to_path_buf());
        std::thread::spawn(move || {
            let s = UnixStream::connect(&socket).unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut w = s;
            let mut line = String::new();
            while !stop.load(Ordering::Relaxed) {
                w.write_all(b"{\"request\":\"count\"}\n").unwrap();
                line.clear();
                r.read_line(&mut line).unwrap();
                asked.fetch_add(1, Ordering::Relaxed);
            }
        })
    });
    let kills = producer::storm(&groups, 250);
    stop.store(true, Ordering::Relaxed);
    if let Some(t) = t { t.join().unwrap(); }
    std::thread::sleep(std::time::Duration::from_secs(3));
    let d = watch.delta();
    println!("REPRO hammer={hammer} asked={} storm={kills} {}", asked.load(Ordering::Relaxed), d.summary("repro", None));
}

#[test]
fn repro_hammer() { require_root(); for _ in 0..3 { run(true); } }
#[test]
fn repro_quiet() { require_root(); for _ in 0..3 { run(false); } }
