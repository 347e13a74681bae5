//! The goals (issues #7 and #18), held against what `oomcount-bench` measured: each row gets its goal
//! and whether it was met, and the whole is printed as a Markdown table (for the README) with
//! each row's note below it.
use serde_json::{Value, json};

/// A figure's goal: at most `limit` in the figure's unit, or, where `below` names a baseline,
/// at most what that baseline measured in the same run (strictly below for `strict`).
struct Goal {
    id: &'static str,
    limit: f64,
    below: Option<&'static str>,
    strict: bool,
    text: &'static str,
}

const fn at_most(id: &'static str, limit: f64, text: &'static str) -> Goal {
    Goal {
        id,
        limit,
        below: None,
        strict: false,
        text,
    }
}

/// The goals of issue #18 (every feature on), and the earlier ones that still stand. The BPF
/// time per OOM event has none: it measured the ring buffer's wakeup, which an OOM kill's own
/// cost dwarfs.
const GOALS: &[Goal] = &[
    Goal {
        id: "rss_steady",
        limit: 3.0 * 1024.0,
        below: Some("watchdog(8), memory locked"),
        strict: true,
        text: "below watchdog(8)'s",
    },
    at_most("rss_peak", 4.0 * 1024.0, "<= 4 MiB"),
    at_most("idle_cpu", 0.0, "0 ticks"),
    Goal {
        id: "startup_time",
        limit: 50.0,
        below: Some("node_exporter (to first /metrics)"),
        strict: false,
        text: "<= node_exporter's",
    },
    at_most("signal_cost", 50.0, "<= +50 ns"),
    at_most("rss_xenstore", 256.0, "<= 0.25 MiB"),
    at_most("count_ratio", 1.5, "<= 1.5x"),
    at_most("latency_p99", 1.0, "<= 1 ms"),
    at_most("latency_rt_p99", 1.0, "<= 1 ms"),
    at_most("latency_quiet_p99", 1.0, "<= 1 ms"),
    // Issue #14: the Prometheus outputs.
    at_most("scrape_cpu_ratio", 0.1, "<= 0.1x"),
    at_most("publish_textfile_p99", 1.0, "<= 1 ms"),
    at_most("publish_port_p99", 1.0, "<= 1 ms"),
    at_most("publish_textfile_quiet_p99", 1.0, "<= 1 ms"),
    at_most("publish_port_quiet_p99", 1.0, "<= 1 ms"),
    at_most("storm_missed", 0.0, "0"),
    at_most("storm_extra", 0.0, "0"),
];

impl Goal {
    /// The limit for `row`: the named baseline's value in this run where there is one, else
    /// the fixed limit (the baseline absent: said in the row's baselines).
    fn limit_for(&self, row: &Value) -> f64 {
        self.below
            .and_then(|name| {
                row["baselines"].as_array()?.iter().find_map(|b| {
                    (b["name"] == name && b["source"] == "this run")
                        .then(|| b["value"].as_f64())
                        .flatten()
                })
            })
            .unwrap_or(self.limit)
    }

    fn met(&self, value: f64, limit: f64) -> bool {
        if self.strict && self.below.is_some() {
            value < limit
        } else {
            value <= limit
        }
    }
}

/// The measurement with `goal` and `met` added to each row that has a goal.
pub fn with_goals(mut measured: Value) -> Value {
    if let Some(rows) = measured["rows"].as_array_mut() {
        for row in rows {
            let Some(goal) = GOALS.iter().find(|g| row["id"] == g.id) else {
                continue;
            };
            let limit = goal.limit_for(row);
            row["goal"] = json!(goal.text);
            row["goal_limit"] = json!(limit);
            if let Some(value) = row["value"].as_f64() {
                row["met"] = json!(goal.met(value, limit));
            }
        }
    }
    measured
}

/// The table, then the notes.
pub fn render(report: &Value) -> String {
    let mut out =
        String::from("| figure | oomcount | goal | met? | baselines (same run unless said) |\n");
    out.push_str("| --- | --- | --- | --- | --- |\n");
    let mut notes = String::new();
    let mut last_note = String::new();
    let rows = report["rows"].as_array().cloned().unwrap_or_default();
    for row in &rows {
        let unit = row["unit"].as_str().unwrap_or("");
        let value = match row["value"].as_f64() {
            Some(v) => format_value(v, unit),
            None => format!("error: {}", row["error"].as_str().unwrap_or("?")),
        };
        let met = match row["met"].as_bool() {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "-",
        };
        let baselines: Vec<String> = row["baselines"]
            .as_array()
            .map(|b| b.iter().map(|b| format_baseline(b, unit)).collect())
            .unwrap_or_default();
        out.push_str(&format!(
            "| {} | {value} | {} | {met} | {} |\n",
            row["figure"].as_str().unwrap_or("?"),
            row["goal"].as_str().unwrap_or("-"),
            if baselines.is_empty() {
                "-".to_owned()
            } else {
                baselines.join("; ")
            }
        ));
        // Rows measured together share their note: it is said once, for the first.
        if let Some(note) = row["note"].as_str()
            && note != last_note
        {
            let figure = row["figure"].as_str().unwrap_or("?");
            notes.push_str(&format!("- {figure}: {note}\n"));
            last_note = note.to_owned();
        }
    }
    format!("{out}\n{notes}")
}

fn format_baseline(b: &Value, unit: &str) -> String {
    let name = b["name"].as_str().unwrap_or("?");
    match (b["value"].as_f64(), b["absent"].as_str()) {
        (Some(v), _) if b["source"] == "this run" => format!("{name} {}", format_value(v, unit)),
        (Some(v), _) => format!("{name} {} (earlier)", format_value(v, unit)),
        (None, Some(why)) => format!("{name}: absent ({why})"),
        (None, None) => format!("{name}: ?"),
    }
}

/// A value in its unit, the way a reader compares it with the goal.
pub fn format_value(v: f64, unit: &str) -> String {
    match unit {
        "kB" => format!("{:.2} MiB", v / 1024.0),
        "ticks" if v == 1.0 => "1 tick (10 ms)".to_owned(),
        "ticks" => format!("{v:.0} ticks ({:.0} ms)", v * 10.0),
        "ms" if v >= 1000.0 => format!("{:.2} s", v / 1000.0),
        "ms" if v >= 10.0 => format!("{v:.0} ms"),
        "ms" => format!("{v:.2} ms"),
        "us" => format!("{v:.2} us"),
        "ns" => format!("{v:+.0} ns"),
        "x" => format!("{v:.2}x"),
        "kills" => format!("{v:.0}"),
        other => format!("{v} {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn goals_are_judged_and_rendered() {
        let measured = json!({"rows": [
            {"id": "rss_steady", "figure": "RSS", "unit": "kB", "value": 4096.0,
             "baselines": [{"name": "watchdog(8), memory locked", "value": 2512.0, "source": "this run"},
                           {"name": "bpftrace", "absent": "not installed"}]},
            {"id": "storm_missed", "figure": "missed", "unit": "kills", "value": 0.0,
             "baselines": [], "note": "2000 kills"},
            {"id": "storm_extra", "figure": "extra", "unit": "kills", "value": 0.0,
             "baselines": [], "note": "2000 kills"},
            {"id": "rss_end", "figure": "end", "unit": "kB", "error": "gone", "baselines": []},
        ]});
        let report = with_goals(measured);
        // Judged against watchdog(8)'s 2512 kB in the same run.
        assert_eq!(report["rows"][0]["goal_limit"], json!(2512.0));
        assert_eq!(report["rows"][0]["met"], json!(false));
        assert_eq!(report["rows"][1]["met"], json!(true));
        assert!(report["rows"][3].get("met").is_none());
        let table = render(&report);
        assert!(table.contains(
            "| RSS | 4.00 MiB | below watchdog(8)'s | **no** | watchdog(8), memory locked 2.45 MiB; bpftrace: absent (not installed) |"
        ));
        assert!(table.contains("| missed | 0 | 0 | yes | - |"));
        assert!(table.contains("| end | error: gone | - | - | - |"));
        assert_eq!(table.matches("2000 kills").count(), 1, "a shared note once");
    }

    #[test]
    fn a_relative_goal_without_its_baseline_falls_back_to_the_fixed_limit() {
        let measured = json!({"rows": [
            {"id": "startup_time", "figure": "start", "unit": "ms", "value": 30.0,
             "baselines": [{"name": "node_exporter (to first /metrics)", "value": 28.0,
                            "source": "this run"}]},
            {"id": "startup_time", "figure": "start", "unit": "ms", "value": 30.0,
             "baselines": [{"name": "node_exporter (to first /metrics)", "absent": "no"}]},
        ]});
        let report = with_goals(measured);
        assert_eq!(report["rows"][0]["met"], json!(false));
        assert_eq!(report["rows"][1]["met"], json!(true));
        assert_eq!(report["rows"][1]["goal_limit"], json!(50.0));
    }

    #[test]
    fn values_in_their_units() {
        assert_eq!(format_value(2496.1, "ms"), "2.50 s");
        assert_eq!(format_value(0.84, "ms"), "0.84 ms");
        assert_eq!(format_value(1.0, "ticks"), "1 tick (10 ms)");
        assert_eq!(format_value(0.93, "x"), "0.93x");
    }
}
