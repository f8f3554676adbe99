//! Latency histograms (hdrhistogram, nanoseconds) and the two outputs: a
//! table for people and one JSON object per line for scripts.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::json;

/// Latencies of one workload.
pub struct Recorder {
    hist: Histogram<u64>,
}

impl Recorder {
    pub fn new() -> Self {
        Recorder {
            // 3 significant digits from 1 ns to an hour.
            hist: Histogram::new_with_bounds(1, 3_600_000_000_000, 3)
                .unwrap_or_else(|_| unreachable_hist()),
        }
    }

    pub fn record(&mut self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1);
        // Values beyond the bounds are clamped rather than lost.
        self.hist.saturating_record(ns);
    }

    pub fn merge(&mut self, other: &Recorder) {
        let _ = self.hist.add(&other.hist);
    }

    pub fn row(&self, engine: &str, workload: &str, unit: &str, rate: f64) -> Row {
        let us = |q: f64| self.hist.value_at_quantile(q) as f64 / 1e3;
        Row {
            engine: engine.into(),
            workload: workload.into(),
            unit: unit.into(),
            rate,
            p50_us: us(0.5),
            p99_us: us(0.99),
            p999_us: us(0.999),
            max_us: self.hist.max() as f64 / 1e3,
            note: String::new(),
        }
    }
}

fn unreachable_hist() -> Histogram<u64> {
    // The bounds above are valid constants; this is only a typed fallback.
    Histogram::new(3).unwrap_or_else(|_| std::process::abort())
}

/// One result line.
#[derive(Debug, Clone)]
pub struct Row {
    pub engine: String,
    pub workload: String,
    pub unit: String,
    pub rate: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    pub note: String,
}

impl Row {
    /// A result that is one number, not a rate with latencies.
    pub fn single(engine: &str, workload: &str, unit: &str, value: f64) -> Row {
        Row {
            engine: engine.into(),
            workload: workload.into(),
            unit: unit.into(),
            rate: value,
            p50_us: 0.0,
            p99_us: 0.0,
            p999_us: 0.0,
            max_us: 0.0,
            note: String::new(),
        }
    }

    pub fn json(&self) -> serde_json::Value {
        json!({
            "engine": self.engine, "workload": self.workload, "unit": self.unit,
            "value": self.rate, "p50_us": self.p50_us, "p99_us": self.p99_us,
            "p999_us": self.p999_us, "max_us": self.max_us, "note": self.note,
        })
    }
}

/// Prints the rows as a Markdown table.
pub fn table(rows: &[Row]) {
    println!("| engine | workload | value | unit | p50 µs | p99 µs | p999 µs | max µs | note |");
    println!("|---|---|---:|---|---:|---:|---:|---:|---|");
    for r in rows {
        println!(
            "| {} | {} | {:.1} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {} |",
            r.engine, r.workload, r.rate, r.unit, r.p50_us, r.p99_us, r.p999_us, r.max_us, r.note
        );
    }
}
