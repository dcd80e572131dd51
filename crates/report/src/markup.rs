//! Escaping for the two output languages. Every string that comes from results.json (instance
//! ids, URLs, names, the command line) passes through one of these before it is written.

/// Text for HTML and SVG, in element content and in double- or single-quoted attributes.
pub fn html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// Text for Markdown prose and table cells: punctuation that CommonMark/GFM would read as
/// markup (emphasis, links, inline HTML, entities, table pipes) is backslash-escaped, and line
/// breaks become spaces so a value cannot end a table row.
pub fn md(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' | '`' | '*' | '_' | '[' | ']' | '<' | '>' | '|' | '&' => {
                out.push('\\');
                out.push(c);
            }
            '\n' | '\r' => out.push(' '),
            _ => out.push(c),
        }
    }
    out
}

/// A fenced code block whose fence is longer than any backtick run inside, so the content
/// cannot close it.
pub fn md_code_block(s: &str) -> String {
    let longest = s.split(|c| c != '`').map(str::len).max().unwrap_or(0);
    let fence = "`".repeat((longest + 1).max(3));
    format!("{fence}\n{s}\n{fence}\n")
}

/// The command line as a shell would need it typed: arguments with spaces or shell
/// metacharacters are single-quoted.
pub fn shell_words(args: &[String]) -> String {
    args.iter()
        .map(|a| {
            let plain = !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./:=,@%+".contains(c));
            if plain {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_escapes_markup_and_quotes() {
        assert_eq!(
            html(r#"<script>alert("x")</script> & 'y'"#),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;y&#39;"
        );
        assert_eq!(html("i-0abc123"), "i-0abc123");
    }

    #[test]
    fn markdown_cells_cannot_break_tables_or_inject_html() {
        assert_eq!(md("a|b"), r"a\|b");
        assert_eq!(md("<img src=x>"), r"\<img src=x\>");
        assert_eq!(md("snake_case *x*"), r"snake\_case \*x\*");
        assert_eq!(md("two\nlines"), "two lines");
        assert_eq!(md("&lt;"), r"\&lt;");
    }

    #[test]
    fn code_fence_outgrows_backticks_inside() {
        let block = md_code_block("echo ````");
        assert!(block.starts_with("`````\n"), "{block}");
        assert_eq!(md_code_block("ls"), "```\nls\n```\n");
    }

    #[test]
    fn shell_words_quote_only_what_needs_it() {
        let args: Vec<String> = [
            "fulcrum",
            "bench",
            "http://127.0.0.1:80/",
            "--threshold",
            "p99<50ms",
            "it's",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            shell_words(&args),
            r"fulcrum bench http://127.0.0.1:80/ --threshold 'p99<50ms' 'it'\''s'"
        );
    }
}
