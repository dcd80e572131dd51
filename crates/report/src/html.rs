//! index.html: the document as one self-contained page. No script, font, stylesheet or image
//! is fetched: styles are inline, charts are inline SVG, and a Content-Security-Policy forbids
//! anything else, so a stray external reference would show up as a console error rather than
//! a silent network request.

use std::fmt::Write as _;

use crate::document::{Align, Block, Report, Table};
use crate::markup::html as esc;

const STYLE: &str = r#"
:root { color-scheme: light; }
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; color: #222; margin: 0; background: #fafafa; }
main { max-width: 1040px; margin: 0 auto; padding: 24px 28px 64px; background: #fff; }
h1 { font-size: 26px; margin: 8px 0 4px; }
h2 { font-size: 21px; margin: 36px 0 8px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
h3 { font-size: 17px; margin: 28px 0 8px; }
h4 { font-size: 15px; margin: 22px 0 6px; }
.byline { color: #666; margin-top: 0; }
nav { font-size: 14px; margin: 12px 0 8px; }
nav a { margin-right: 14px; color: #2a5d9f; text-decoration: none; }
.warning { background: #fff4e5; border: 1px solid #f0a020; border-left: 6px solid #e07b00; padding: 10px 14px; margin: 14px 0; border-radius: 4px; }
.warning strong { color: #a04e00; }
.note { color: #666; font-style: italic; background: #f4f4f4; padding: 6px 10px; border-radius: 4px; }
pre { background: #f4f4f4; padding: 10px 12px; overflow-x: auto; border-radius: 4px; font-size: 13px; }
.table { overflow-x: auto; margin: 10px 0 18px; }
table { border-collapse: collapse; font-size: 13px; font-variant-numeric: tabular-nums; }
caption { text-align: left; font-style: italic; color: #555; padding-bottom: 4px; }
th, td { border-bottom: 1px solid #e6e6e6; padding: 4px 10px; text-align: left; white-space: nowrap; }
th { background: #f2f4f7; font-weight: 600; }
td.num, th.num { text-align: right; }
figure { margin: 16px 0 22px; }
svg.chart { max-width: 100%; height: auto; display: block; }
ul.findings li { margin-bottom: 6px; }
footer { color: #888; font-size: 13px; margin-top: 40px; }
"#;

pub fn render(doc: &Report) -> String {
    let mut out = String::with_capacity(64 * 1024);
    let _ = write!(
        out,
        r#"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">
<title>{}</title>
<style>{STYLE}</style>
</head>
<body>
<main>
<h1>{}</h1>
<p class="byline">{}</p>
"#,
        esc(&doc.title),
        esc(&doc.title),
        esc(&doc.byline)
    );
    for w in &doc.warnings {
        let _ = writeln!(
            out,
            r#"<div class="warning" role="alert"><strong>Warning:</strong> {}</div>"#,
            esc(w)
        );
    }
    out.push_str("<nav>");
    // Sub-sections (the shoot-out's scenarios) stay out of the bar: it lists the report's parts.
    for s in doc.sections.iter().filter(|s| s.level <= 3) {
        let _ = write!(out, r##"<a href="#{}">{}</a>"##, esc(&s.id), esc(&s.title));
    }
    out.push_str("</nav>\n");
    for s in &doc.sections {
        let h = match s.level {
            ..=2 => "h2",
            3 => "h3",
            _ => "h4",
        };
        let _ = writeln!(
            out,
            r#"<section id="{}"><{h}>{}</{h}>"#,
            esc(&s.id),
            esc(&s.title)
        );
        for b in &s.blocks {
            block(&mut out, b, s.id == "conclusion");
        }
        out.push_str("</section>\n");
    }
    out.push_str(
        "<footer>One self-contained file: no scripts, fonts or network requests. Charts are inline SVG; \
         hover a mark for its value.</footer>\n</main>\n</body>\n</html>\n",
    );
    out
}

fn block(out: &mut String, b: &Block, findings: bool) {
    match b {
        Block::Para(t) => {
            let _ = writeln!(out, "<p>{}</p>", esc(t));
        }
        Block::List(items) => {
            out.push_str(if findings {
                r#"<ul class="findings">"#
            } else {
                "<ul>"
            });
            for i in items {
                let _ = write!(out, "<li>{}</li>", esc(i));
            }
            out.push_str("</ul>\n");
        }
        Block::Code(c) => {
            let _ = writeln!(out, "<pre><code>{}</code></pre>", esc(c));
        }
        Block::Table(t) => table(out, t),
        Block::Chart { chart, missing } => match chart.as_ref().and_then(|c| c.render()) {
            Some(svg) => {
                let _ = writeln!(out, "<figure>{svg}</figure>");
            }
            None => {
                let _ = writeln!(out, r#"<p class="note">{}</p>"#, esc(missing));
            }
        },
    }
}

fn table(out: &mut String, t: &Table) {
    out.push_str(r#"<div class="table"><table>"#);
    if let Some(c) = &t.caption {
        let _ = write!(out, "<caption>{}</caption>", esc(c));
    }
    let class = |i: usize| match t.columns.get(i).map(|c| c.align) {
        Some(Align::Right) => r#" class="num""#,
        _ => "",
    };
    out.push_str("<thead><tr>");
    for (i, c) in t.columns.iter().enumerate() {
        let _ = write!(out, "<th{}>{}</th>", class(i), esc(&c.title));
    }
    out.push_str("</tr></thead><tbody>");
    for row in &t.rows {
        out.push_str("<tr>");
        for (i, c) in row.iter().enumerate() {
            let _ = write!(out, "<td{}>{}</td>", class(i), esc(c));
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table></div>\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::document::{Column, Section};

    #[test]
    fn page_escapes_data_and_notes_missing_charts() {
        let mut t = Table::new(vec![Column::text("Instance"), Column::number("Requests")]);
        t.row(vec!["<img src=x onerror=alert(1)>".into(), "3".into()]);
        let doc = Report {
            title: "seed & <lab>".into(),
            byline: "b".into(),
            warnings: vec!["saturated <generator>".into()],
            sections: vec![Section {
                id: "shootout".into(),
                title: "Shoot-out".into(),
                level: 3,
                blocks: vec![
                    Block::Table(t),
                    Block::Chart {
                        chart: None,
                        missing: "No shoot-out in this file.".into(),
                    },
                ],
            }],
        };
        let page = render(&doc);
        assert!(page.contains("<title>seed &amp; &lt;lab&gt;</title>"));
        assert!(page.contains("&lt;img src=x onerror=alert(1)&gt;"));
        assert!(!page.contains("<img"));
        assert!(!page.contains("<lab>"));
        assert!(page.contains(r#"<p class="note">No shoot-out in this file.</p>"#));
        assert!(!page.contains("<svg"));
        assert!(page.contains("saturated &lt;generator&gt;"));
        assert!(page.contains(r#"<td class="num">3</td>"#));
        // Self-contained: nothing that could fetch.
        for bad in ["<script", "<link", "src=\"http", "@import", "url("] {
            assert!(!page.contains(bad), "{bad}");
        }
    }
}
