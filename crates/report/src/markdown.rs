//! REPORT.md: the document in GitHub-flavoured Markdown. Charts live in index.html; every
//! number shown next to them is also in the tables here.

use std::fmt::Write as _;

use crate::document::{Align, Block, Report, Table};
use crate::markup::{md, md_code_block};

pub fn render(doc: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# {}\n\n{}\n", md(&doc.title), md(&doc.byline));
    for w in &doc.warnings {
        let _ = writeln!(out, "> **Warning:** {}\n", md(w));
    }
    // A table of contents like the seed's, so the sections read in the same order.
    for s in &doc.sections {
        let indent = "  ".repeat(s.level.saturating_sub(2) as usize);
        let _ = writeln!(out, "{indent}- [{}](#{})", md(&s.title), anchor(&s.title));
    }
    out.push('\n');
    for s in &doc.sections {
        let _ = writeln!(out, "{} {}\n", "#".repeat(s.level as usize), md(&s.title));
        for b in &s.blocks {
            block(&mut out, b);
        }
    }
    out
}

/// GitHub's heading anchor: lower case, spaces to dashes, punctuation dropped.
fn anchor(title: &str) -> String {
    title
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

fn block(out: &mut String, b: &Block) {
    match b {
        Block::Para(t) => {
            let _ = writeln!(out, "{}\n", md(t));
        }
        Block::List(items) => {
            for i in items {
                let _ = writeln!(out, "- {}", md(i));
            }
            out.push('\n');
        }
        Block::Code(c) => {
            out.push_str(&md_code_block(c));
            out.push('\n');
        }
        Block::Table(t) => table(out, t),
        // Charts are drawn in index.html only.
        Block::Chart { .. } => {}
    }
}

fn table(out: &mut String, t: &Table) {
    if let Some(c) = &t.caption {
        let _ = writeln!(out, "*{}*\n", md(c));
    }
    let _ = writeln!(
        out,
        "{}",
        table_row(t.columns.iter().map(|c| c.title.as_str()))
    );
    let rule: Vec<&str> = t
        .columns
        .iter()
        .map(|c| match c.align {
            Align::Left => "---",
            Align::Right => "---:",
        })
        .collect();
    let _ = writeln!(out, "| {} |", rule.join(" | "));
    for row in &t.rows {
        let _ = writeln!(out, "{}", table_row(row.iter().map(String::as_str)));
    }
    out.push('\n');
}

fn table_row<'s>(cells: impl Iterator<Item = &'s str>) -> String {
    format!("| {} |", cells.map(md).collect::<Vec<_>>().join(" | "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::document::{Column, Section};

    #[test]
    fn tables_align_numbers_and_escape_cells() {
        let mut t = Table::new(vec![Column::text("Instance"), Column::number("Requests")])
            .caption("per instance");
        t.row(vec!["i-1|<x>".into(), "1,000".into()]);
        let doc = Report {
            title: "T".into(),
            byline: "b".into(),
            warnings: vec!["generator saturated".into()],
            sections: vec![Section {
                id: "s".into(),
                title: "Latency and Response Times".into(),
                level: 3,
                blocks: vec![Block::Table(t)],
            }],
        };
        let md = render(&doc);
        assert!(md.contains("> **Warning:** generator saturated"), "{md}");
        assert!(
            md.contains("| Instance | Requests |\n| --- | ---: |\n| i-1\\|\\<x\\> | 1,000 |"),
            "{md}"
        );
        assert!(
            md.contains("  - [Latency and Response Times](#latency-and-response-times)"),
            "{md}"
        );
        assert!(md.contains("### Latency and Response Times"), "{md}");
    }
}
