//! `missive-bench plot`: JSON result lines (from `engine --json`) into an
//! SVG chart.
//!
//! Three panels, one bar per engine per workload: throughput (higher is
//! better), p99 latency (lower is better) and bytes per message (lower is
//! better). Bars are scaled to the largest value of their workload, so
//! workloads of very different magnitudes share an axis; each bar is
//! labelled with its absolute value.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use plotters::prelude::*;

/// One parsed result line.
#[derive(Debug, Clone)]
struct Point {
    engine: String,
    workload: String,
    unit: String,
    value: f64,
    p99_us: f64,
}

fn parse(text: &str, origin: &Path) -> Result<Vec<Point>> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if !line.starts_with('{') {
            continue; // tables, logs: not results
        }
        let v: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not a JSON result", origin.display(), n + 1))?;
        let s = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_owned);
        let f = |k: &str| v.get(k).and_then(serde_json::Value::as_f64);
        let (Some(engine), Some(workload), Some(unit), Some(value)) =
            (s("engine"), s("workload"), s("unit"), f("value"))
        else {
            bail!(
                "{}:{}: a result needs engine, workload, unit and value",
                origin.display(),
                n + 1
            );
        };
        out.push(Point {
            engine,
            workload,
            unit,
            value,
            p99_us: f("p99_us").unwrap_or(0.0),
        });
    }
    Ok(out)
}

/// A panel: per workload, per engine, (value, label).
type Panel = BTreeMap<String, BTreeMap<String, (f64, String)>>;

/// Reads the result files and writes the chart to `out`.
pub fn plot(inputs: &[std::path::PathBuf], out: &Path, title: &str) -> Result<()> {
    let mut points = Vec::new();
    for p in inputs {
        let text = std::fs::read_to_string(p).with_context(|| format!("read {}", p.display()))?;
        points.extend(parse(&text, p)?);
    }
    if points.is_empty() {
        bail!("no JSON result lines in the inputs (run `missive-bench engine --json`)");
    }
    let mut rate = Panel::new();
    let mut p99 = Panel::new();
    let mut space = Panel::new();
    for p in &points {
        if p.unit.ends_with("/s") {
            let label = if p.value >= 1e3 {
                format!("{:.0}K", p.value / 1e3)
            } else {
                format!("{:.0}", p.value)
            };
            rate.entry(p.workload.clone())
                .or_default()
                .insert(p.engine.clone(), (p.value, label));
            p99.entry(p.workload.clone())
                .or_default()
                .insert(p.engine.clone(), (p.p99_us, format!("{:.0}µs", p.p99_us)));
        } else if p.unit == "bytes/msg" {
            space
                .entry(p.workload.clone())
                .or_default()
                .insert(p.engine.clone(), (p.value, format!("{:.1}", p.value)));
        }
    }
    let mut engines: Vec<String> = points.iter().map(|p| p.engine.clone()).collect();
    engines.sort();
    engines.dedup();

    let root = SVGBackend::new(out, (1400, 900)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 24))?;
    let (top, bottom) = root.split_vertically(430);
    let (left, right) = bottom.split_horizontally(1150);
    panel(&top, "throughput (higher is better)", &rate, &engines)?;
    panel(&left, "p99 latency (lower is better)", &p99, &engines)?;
    panel(&right, "bytes / message", &space, &engines)?;
    root.present()?;
    Ok(())
}

const COLORS: [RGBColor; 4] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xd6, 0x27, 0x28),
];

fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    caption: &str,
    data: &Panel,
    engines: &[String],
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let n = data.len().max(1) as f64;
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(40)
        .build_cartesian_2d(0.0..n, 0.0..1.2)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .disable_x_axis()
        .y_desc("relative to the largest")
        .draw()?;
    let width = 0.8 / engines.len().max(1) as f64;
    for (wi, (workload, by_engine)) in data.iter().enumerate() {
        let max = by_engine
            .values()
            .map(|(v, _)| *v)
            .fold(0.0_f64, f64::max)
            .max(f64::MIN_POSITIVE);
        for (ei, engine) in engines.iter().enumerate() {
            let Some((v, label)) = by_engine.get(engine) else {
                continue;
            };
            let x0 = wi as f64 + 0.1 + ei as f64 * width;
            let h = v / max;
            let color = COLORS[ei % COLORS.len()];
            chart.draw_series(std::iter::once(Rectangle::new(
                [(x0, 0.0), (x0 + width * 0.9, h)],
                color.filled(),
            )))?;
            chart.draw_series(std::iter::once(Text::new(
                label.clone(),
                (x0, h + 0.06),
                ("sans-serif", 12),
            )))?;
        }
        chart.draw_series(std::iter::once(Text::new(
            workload.clone(),
            (wi as f64 + 0.1, -0.02),
            ("sans-serif", 13),
        )))?;
    }
    // The legend: one swatch per engine.
    for (ei, engine) in engines.iter().enumerate() {
        let color = COLORS[ei % COLORS.len()];
        let y = 1.17 - ei as f64 * 0.07;
        chart.draw_series(std::iter::once(Rectangle::new(
            [(n - 0.9, y - 0.04), (n - 0.8, y)],
            color.filled(),
        )))?;
        chart.draw_series(std::iter::once(Text::new(
            engine.clone(),
            (n - 0.75, y),
            ("sans-serif", 13),
        )))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_results_and_refuses_malformed_lines() {
        let text = "| table |\n{\"engine\":\"missive\",\"workload\":\"ingest\",\"unit\":\"msgs/s\",\"value\":5.0,\"p99_us\":3.0}\n";
        let p = parse(text, Path::new("x")).unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].p99_us, 3.0);
        assert!(parse("{\"engine\":\"m\"}", Path::new("x")).is_err());
        assert!(parse("{nope", Path::new("x")).is_err());
    }

    #[test]
    fn writes_an_svg() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("r.jsonl");
        std::fs::write(
            &input,
            "{\"engine\":\"missive\",\"workload\":\"ingest\",\"unit\":\"msgs/s\",\"value\":900000.0,\"p99_us\":30.0}\n\
             {\"engine\":\"rocksdb\",\"workload\":\"ingest\",\"unit\":\"msgs/s\",\"value\":500000.0,\"p99_us\":60.0}\n\
             {\"engine\":\"missive\",\"workload\":\"space\",\"unit\":\"bytes/msg\",\"value\":70.0}\n",
        )
        .unwrap();
        let out = dir.path().join("c.svg");
        plot(&[input], &out, "t").unwrap();
        let svg = std::fs::read_to_string(&out).unwrap();
        assert!(svg.contains("<svg"));
        assert!(svg.contains("900K") && svg.contains("500K"), "labels drawn");
        assert!(plot(&[dir.path().join("missing")], &out, "t").is_err());
    }
}
