//! The report as a document, before it is written in a language: sections of prose, warnings,
//! tables and charts. REPORT.md and index.html are both rendered from the same document, so
//! their numbers cannot disagree.

use crate::plot::Chart;

#[derive(Debug, Clone)]
pub struct Section {
    /// Anchor for links, stable across runs.
    pub id: String,
    pub title: String,
    /// 2 for `##`, 3 for `###`, 4 for `####`.
    pub level: u8,
    pub blocks: Vec<Block>,
}

#[derive(Debug, Clone)]
pub enum Block {
    /// Plain text: renderers escape it.
    Para(String),
    /// Plain-text items.
    List(Vec<String>),
    Code(String),
    Table(Table),
    /// A chart for index.html (REPORT.md points to it); when there is nothing to plot the
    /// page shows `missing` instead of an empty frame.
    Chart {
        chart: Option<Chart>,
        missing: String,
    },
}

/// A table of plain-text cells.
#[derive(Debug, Clone, Default)]
pub struct Table {
    pub caption: Option<String>,
    pub headers: Vec<String>,
    /// Right-align the column (numbers).
    pub numeric: Vec<bool>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    /// Column headers; a header ending in `#` marks a numeric column (the `#` is dropped).
    pub fn new(headers: &[&str]) -> Table {
        Table {
            caption: None,
            headers: headers
                .iter()
                .map(|h| h.trim_end_matches('#').to_owned())
                .collect(),
            numeric: headers.iter().map(|h| h.ends_with('#')).collect(),
            rows: Vec::new(),
        }
    }

    pub fn caption(mut self, c: impl Into<String>) -> Table {
        self.caption = Some(c.into());
        self
    }

    pub fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.headers.len(), "row width");
        self.rows.push(cells);
    }
}

/// The whole report.
#[derive(Debug, Clone)]
pub struct Report {
    pub title: String,
    /// One line under the title: where and when the numbers come from.
    pub byline: String,
    /// Shown above everything else.
    pub warnings: Vec<String>,
    pub sections: Vec<Section>,
}
