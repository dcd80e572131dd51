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

impl Section {
    pub fn new(
        id: impl Into<String>,
        title: impl Into<String>,
        level: u8,
        blocks: Vec<Block>,
    ) -> Section {
        Section {
            id: id.into(),
            title: title.into(),
            level,
            blocks,
        }
    }
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

impl Block {
    pub fn chart(chart: Option<Chart>, missing: &str) -> Block {
        Block::Chart {
            chart,
            missing: missing.into(),
        }
    }
}

/// How a column's cells line up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    Left,
    /// Numbers, so their digits line up.
    Right,
}

/// A table column: its title (plain text) and alignment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub title: String,
    pub align: Align,
}

impl Column {
    pub fn text(title: &str) -> Column {
        Column {
            title: title.into(),
            align: Align::Left,
        }
    }

    pub fn number(title: &str) -> Column {
        Column {
            title: title.into(),
            align: Align::Right,
        }
    }
}

/// A table of plain-text cells.
#[derive(Debug, Clone, Default)]
pub struct Table {
    pub caption: Option<String>,
    pub columns: Vec<Column>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(columns: Vec<Column>) -> Table {
        Table {
            caption: None,
            columns,
            rows: Vec::new(),
        }
    }

    pub fn caption(mut self, c: impl Into<String>) -> Table {
        self.caption = Some(c.into());
        self
    }

    pub fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.columns.len(), "row width");
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
