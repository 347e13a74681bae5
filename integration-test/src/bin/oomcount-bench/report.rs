//! The bench's output: one row per figure, each with oomcount's value and the baselines
//! measured beside it (or why one is absent). `cargo xtask bench` adds the goals, prints the
//! table and writes it to `target/bench/bench.json`.
use serde_json::{Value, json};

/// A figure and its unit: `kB`, `ticks`, `ms`, `us`, `x` (a ratio), `kills`.
pub struct Row {
    pub id: &'static str,
    pub figure: &'static str,
    pub unit: &'static str,
    value: Result<f64, String>,
    baselines: Vec<Value>,
    note: String,
}

impl Row {
    pub fn new(id: &'static str, figure: &'static str, unit: &'static str) -> Row {
        Row {
            id,
            figure,
            unit,
            value: Err("not measured".to_owned()),
            baselines: Vec::new(),
            note: String::new(),
        }
    }

    pub fn value(mut self, value: Result<f64, String>) -> Row {
        self.value = value;
        self
    }

    pub fn note(mut self, note: impl Into<String>) -> Row {
        self.note = note.into();
        self
    }

    /// A baseline measured in this run, or why it could not be.
    pub fn baseline(mut self, name: &str, value: Result<f64, String>) -> Row {
        self.baselines.push(match value {
            Ok(v) => json!({"name": name, "value": v, "source": "this run"}),
            Err(why) => json!({"name": name, "absent": why}),
        });
        self
    }

    /// A figure measured earlier on this kind of machine (FACTS.md), not in this run.
    pub fn earlier(mut self, name: &str, value: f64) -> Row {
        self.baselines
            .push(json!({"name": name, "value": value, "source": "earlier (FACTS.md)"}));
        self
    }

    pub fn to_json(&self) -> Value {
        let mut row = json!({
            "id": self.id,
            "figure": self.figure,
            "unit": self.unit,
            "baselines": self.baselines,
        });
        match &self.value {
            Ok(v) => row["value"] = json!(v),
            Err(why) => row["error"] = json!(why),
        }
        if !self.note.is_empty() {
            row["note"] = json!(self.note);
        }
        row
    }
}

/// The `p`-th percentile (0-100, nearest rank) of `values`, or `None` when there are none.
pub fn percentile(values: &[f64], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&[3.0, 1.0, 2.0], 50.0), Some(2.0));
        assert_eq!(percentile(&[], 50.0), None);
    }
}
