//! # fulcrum-report
//!
//! Owns turning a `results.json` into `REPORT.md` and a self-contained `index.html`.
//! It does not measure anything (`fulcrum-loadgen`, `fulcrum-experiment` do), and it does not
//! define the schema it reads (`fulcrum_loadgen::results` does), nor the criteria the
//! experiment judged by (a ramp step's sustained share and p99 bound are read from the file).
//!
//! The report fills the seed report's empty benchmark sections (Expectations, CPU Utilization,
//! Latency and Response Times, Throughput, Conclusion) from the data, and adds the setup, the
//! shoot-out (fulcrum's policies against peer balancers, scenario by scenario) and every run.
//! `write` computes one `Analysis` — every figure and verdict — and renders one document from
//! it (`sections::build`), so the two files agree and a table cannot disagree with the sentence
//! that judges it; the conclusion's wording claims only what the analysis decided, and says
//! "within noise" when per-round spreads overlap.
//!
//! Modules:
//! - `analysis`: every figure and verdict, computed once: clusters and CPU-bound ceilings, each
//!   run's CPU and requests per worker, latency rows, the capacity ramps with their order and
//!   the seed's expectation, warnings, and the shoot-out (order, best peer, fulcrum's default,
//!   verdict).
//! - `conclusion`: the analysis's verdicts and warnings in words.
//! - `sections`, `shootout`, `charts`: the document and its charts, read from the analysis;
//!   `document`: the model they fill (tables with typed columns).
//! - `markdown`, `html`: the two renderings; `plot`: hand-written inline SVG charts;
//!   `markup`: escaping; `units`: how numbers (and a few composite values) are written.

mod analysis;
mod charts;
mod conclusion;
mod document;
mod html;
mod markdown;
mod markup;
mod plot;
#[cfg(test)]
mod sample;
mod sections;
mod shootout;
mod units;

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use fulcrum_loadgen::results::{Results, SCHEMA_VERSION};

/// Why a results file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{0} is not JSON: {1}")]
    NotJson(PathBuf, serde_json::Error),
    #[error("{0} is not a fulcrum results.json: it has no numeric `schema` field")]
    NoSchema(PathBuf),
    #[error(
        "{path} has results schema version {found} (written by fulcrum {writer}), but this fulcrum reads version {expected}; \
         use the fulcrum version that wrote it, or re-run the benchmark"
    )]
    SchemaVersion {
        path: PathBuf,
        found: u64,
        expected: u32,
        writer: String,
    },
    #[error("{0} does not match results schema version {SCHEMA_VERSION}: {1}")]
    Invalid(PathBuf, serde_json::Error),
}

/// Reads a results.json, checking its schema version before anything else so an old or new
/// file fails with that, not with a missing field.
pub fn load(path: impl AsRef<Path>) -> anyhow::Result<Results> {
    let path = path.as_ref();
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| LoadError::NotJson(path.into(), e))?;
    let found = value
        .get("schema")
        .and_then(serde_json::Value::as_u64)
        .ok_or_else(|| LoadError::NoSchema(path.into()))?;
    if found != u64::from(SCHEMA_VERSION) {
        let writer = value
            .get("fulcrum_version")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("unknown")
            .to_owned();
        return Err(LoadError::SchemaVersion {
            path: path.into(),
            found,
            expected: SCHEMA_VERSION,
            writer,
        }
        .into());
    }
    Ok(serde_json::from_value(value).map_err(|e| LoadError::Invalid(path.into(), e))?)
}

/// Where `write` put the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub markdown: PathBuf,
    pub html: PathBuf,
}

/// Writes `REPORT.md` and `index.html` into `out_dir` (created if missing).
pub fn write(results: &Results, out_dir: &Path) -> anyhow::Result<Written> {
    std::fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    // Figured once: every section, chart and sentence reads this.
    let doc = sections::build(&analysis::Analysis::new(results));
    let written = Written {
        markdown: out_dir.join("REPORT.md"),
        html: out_dir.join("index.html"),
    };
    std::fs::write(&written.markdown, markdown::render(&doc))
        .with_context(|| format!("writing {}", written.markdown.display()))?;
    std::fs::write(&written.html, html::render(&doc))
        .with_context(|| format!("writing {}", written.html.display()))?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("fulcrum-report-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn load_round_trips_and_rejects_other_schema_versions() {
        let dir = scratch("load");
        let r = sample::experiment();
        let p = dir.join("results.json");
        std::fs::write(&p, serde_json::to_string(&r).unwrap()).unwrap();
        // Floats may lose their last bit through JSON, so compare what the report reads.
        let back = load(&p).unwrap();
        assert_eq!(back.runs.len(), r.runs.len());
        assert_eq!(back.runs[0].name, r.runs[0].name);
        assert_eq!(back.runs[0].latency.hdr, r.runs[0].latency.hdr);
        assert_eq!(back.experiment.unwrap().scenarios.len(), 4);

        let mut v = serde_json::to_value(&r).unwrap();
        v["schema"] = 99.into();
        std::fs::write(&p, v.to_string()).unwrap();
        let e = load(&p).unwrap_err();
        let msg = format!("{e:#}");
        assert!(msg.contains("schema version 99"), "{msg}");
        assert!(msg.contains("reads version 2"), "{msg}");
        assert!(matches!(
            e.downcast_ref::<LoadError>(),
            Some(LoadError::SchemaVersion { found: 99, .. })
        ));

        std::fs::write(&p, r#"{"hello": 1}"#).unwrap();
        assert!(format!("{:#}", load(&p).unwrap_err()).contains("no numeric `schema`"));
        std::fs::write(&p, format!(r#"{{"schema": {SCHEMA_VERSION}, "runs": 3}}"#)).unwrap();
        assert!(format!("{:#}", load(&p).unwrap_err()).contains("does not match results schema"));
        std::fs::write(&p, "not json").unwrap();
        assert!(format!("{:#}", load(&p).unwrap_err()).contains("is not JSON"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn write_produces_both_files_with_the_seed_sections() {
        let dir = scratch("write");
        let w = write(&sample::experiment(), &dir.join("out")).unwrap();
        let md = std::fs::read_to_string(&w.markdown).unwrap();
        for s in [
            "### Expectations",
            "### CPU Utilization",
            "### Latency and Response Times",
            "### Throughput",
            "## Conclusion",
            "### Shoot-out",
            "#### Scenario: steady",
            "#### Scenario: antagonist",
            "#### Scenario: replicas",
            "#### Scenario: heavy-tail",
        ] {
            assert!(md.contains(s), "missing {s}");
        }
        let html = std::fs::read_to_string(&w.html).unwrap();
        assert!(html.starts_with("<!DOCTYPE html>"));
        assert_eq!(html.matches("<svg").count(), 16);
        assert!(html.contains(r#"<section id="shootout-heavy-tail"><h4>Scenario: heavy-tail</h4>"#));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
