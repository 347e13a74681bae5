//! Victims named with any bytes, through the per-key tables and the exposition; and any bytes as
//! the head of a request to the metrics port.
//!
//! Whatever the names, the exposition is lines of the text format: comments, and samples whose
//! label values hold only the three escapes the format knows (`\\`, `\"`, `\n`) and no raw quote
//! or line feed; each table keeps at most its 8 rows and `_other`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = oomcount::fuzzing::metrics(data);
    assert!(text.ends_with('\n'));
    let mut samples = [0usize; 2];
    for line in text.lines() {
        if line.starts_with("# HELP ") || line.starts_with("# TYPE ") {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("a sample: series and value");
        value.parse::<f64>().expect("a number");
        let Some((name, labels)) = series.split_once('{') else {
            continue;
        };
        match name {
            "oomcount_cgroup_oom_kills_total" => samples[0] += 1,
            "oomcount_comm_oom_kills_total" => samples[1] += 1,
            _ => {}
        }
        let quoted = labels
            .split_once("=\"")
            .and_then(|(_, v)| v.strip_suffix("\"}"))
            .expect("one label, quoted");
        let mut chars = quoted.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => assert!(matches!(chars.next(), Some('\\' | '"' | 'n')), "{line:?}"),
                '"' | '\n' => panic!("raw {c:?} in {line:?}"),
                _ => {}
            }
        }
    }
    assert!(samples.iter().all(|&n| n <= 9), "{samples:?}");
});
