//! `--mix FILE`: the weighted requests a benchmark sends instead of one fixed GET.
//!
//! ```toml
//! # fulcrum bench request mix: each send picks one entry, with probability weight / sum of weights.
//! [[request]]
//! path = "/?work_us=500"   # path and query, sent to every target
//! weight = 3               # default 1
//! [[request]]
//! path = "/cluster1"
//! method = "POST"          # default: the run's (`-m`, GET)
//! body = "{\"n\": 1}"       # default: the run's (`--body`, none)
//! ```
//!
//! A mix is validated once, when it is read or built; every mistake in a file is reported as
//! `file:line:column: what was expected`. Each entry is serialized once per target before the
//! run (see `client::Target`), and each send only draws an index (`Weights::pick`), so a mix
//! costs the generator's hot path one random number and a binary search, no allocation.

use std::ops::Range;
use std::path::Path;

use serde::Deserialize;
use toml::Spanned;

/// What a mix file starts with, so a written mix explains itself.
const HEADER: &str =
    "# fulcrum bench request mix: each send picks one entry, with probability weight / sum of weights.\n";

/// Weighted requests, validated: at least one entry, every path a valid request target, every
/// weight finite and positive.
///
/// Built only by [`RequestMix::load`], [`RequestMix::parse`] or [`RequestMix::new`] (the struct
/// is `non_exhaustive`); `run` checks it again, as its fields may have been changed since.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RequestMix {
    pub entries: Vec<MixEntry>,
    /// The file the mix was read from, as given; `None` for a mix built in code.
    pub file: Option<String>,
}

/// One weighted request of a mix: `path`, with the run's method and body unless the entry
/// names its own.
#[derive(Debug, Clone, PartialEq)]
pub struct MixEntry {
    /// Path and query, starting with `/`; sent to every target.
    pub path: String,
    /// Relative: the entry is picked with probability weight / sum of weights.
    pub weight: f64,
    /// This entry's method instead of the run's.
    pub method: Option<String>,
    /// This entry's body instead of the run's.
    pub body: Option<String>,
}

impl MixEntry {
    pub fn new(path: impl Into<String>, weight: f64) -> MixEntry {
        MixEntry {
            path: path.into(),
            weight,
            method: None,
            body: None,
        }
    }
}

/// The root at a file entry's default weight.
impl Default for MixEntry {
    fn default() -> MixEntry {
        MixEntry::new("/", 1.0)
    }
}

/// A mix that could not be read or is not valid; displays as one line,
/// `file:line:column: message` (or `file: message` when no position applies).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{file}{}: {message}", position(*.line, *.column))]
pub struct MixError {
    pub file: String,
    /// 1-based; 0 when the mistake has no place in a file.
    pub line: usize,
    pub column: usize,
    pub message: String,
}

fn position(line: usize, column: usize) -> String {
    if line == 0 {
        String::new()
    } else {
        format!(":{line}:{column}")
    }
}

/// The file's shape; unknown keys are mistakes, not silently ignored.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MixFile {
    #[serde(default)]
    request: Vec<FileEntry>,
}

/// One `[[request]]` table. New request fields become new optional keys here.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileEntry {
    path: Spanned<String>,
    weight: Option<Spanned<f64>>,
    method: Option<Spanned<String>>,
    body: Option<String>,
}

impl RequestMix {
    /// Reads and validates a mix file; errors name `path` as given.
    pub fn load(path: &Path) -> Result<RequestMix, MixError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| MixError {
            file: file.clone(),
            line: 0,
            column: 0,
            message: format!("cannot read the request mix: {e}"),
        })?;
        RequestMix::parse(&text, &file)
    }

    /// Validates mix TOML; `file` names it in errors and in the result.
    pub fn parse(text: &str, file: &str) -> Result<RequestMix, MixError> {
        let locate = |span: Range<usize>, message: String| located(text, file, span, message);
        let parsed: MixFile = toml::from_str(text).map_err(|e| {
            let message = e.message().trim().replace('\n', "; ");
            locate(e.span().unwrap_or(0..0), message)
        })?;
        if parsed.request.is_empty() {
            return Err(locate(
                0..0,
                "expected at least one [[request]] table".into(),
            ));
        }
        let mut entries = Vec::with_capacity(parsed.request.len());
        for r in parsed.request {
            check_path(r.path.get_ref()).map_err(|m| locate(r.path.span(), m))?;
            let weight = match r.weight {
                Some(w) => {
                    check_weight(*w.get_ref()).map_err(|m| locate(w.span(), m))?;
                    *w.get_ref()
                }
                None => 1.0,
            };
            if let Some(m) = &r.method {
                check_method(m.get_ref()).map_err(|e| locate(m.span(), e))?;
            }
            entries.push(MixEntry {
                method: r.method.map(Spanned::into_inner),
                body: r.body,
                ..MixEntry::new(r.path.into_inner(), weight)
            });
        }
        check_total(&entries).map_err(|m| locate(0..0, m))?;
        Ok(RequestMix {
            entries,
            file: Some(file.to_owned()),
        })
    }

    /// A mix built in code, validated like a file (errors name the entry by its 1-based index).
    pub fn new(entries: Vec<MixEntry>) -> Result<RequestMix, MixError> {
        let mix = RequestMix {
            entries,
            file: None,
        };
        mix.check()?;
        Ok(mix)
    }

    /// Whether the entries are (still) a valid mix; errors name the entry by its 1-based index.
    pub fn check(&self) -> Result<(), MixError> {
        let error = |message: String| MixError {
            file: self.file.clone().unwrap_or_else(|| "request mix".into()),
            line: 0,
            column: 0,
            message,
        };
        if self.entries.is_empty() {
            return Err(error("expected at least one entry".into()));
        }
        for (i, e) in self.entries.iter().enumerate() {
            check_path(&e.path)
                .and_then(|()| check_weight(e.weight))
                .and_then(|()| e.method.as_deref().map_or(Ok(()), check_method))
                .map_err(|m| error(format!("entry {}: {m}", i + 1)))?;
        }
        check_total(&self.entries).map_err(error)
    }

    /// Records where the mix is kept (e.g. after writing [`RequestMix::to_toml`] to a file).
    pub fn with_file(mut self, file: impl Into<String>) -> RequestMix {
        self.file = Some(file.into());
        self
    }

    /// The mix as a file `--mix` reads back to the same mix.
    pub fn to_toml(&self) -> String {
        let mut out = String::from(HEADER);
        for e in &self.entries {
            // Valid paths are printable ASCII, so only `\` and `"` need escaping.
            let path = e.path.replace('\\', "\\\\").replace('"', "\\\"");
            // `{:?}` keeps a float a TOML float (`3.0`, `1e300`), never a too-long integer.
            out.push_str(&format!(
                "[[request]]\npath = \"{path}\"\nweight = {:?}\n",
                e.weight
            ));
            if let Some(m) = &e.method {
                out.push_str(&format!("method = \"{m}\"\n"));
            }
            if let Some(b) = &e.body {
                // A TOML basic string: serde's escaping of every character that needs it.
                out.push_str(&format!("body = {}\n", toml::Value::String(b.clone())));
            }
        }
        out
    }

    pub(crate) fn weights(&self) -> Weights {
        Weights::new(self.entries.iter().map(|e| e.weight))
    }
}

/// A request target as it goes on the request line: origin form, printable ASCII.
fn check_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("expected a path starting with '/', found an empty string".into());
    }
    if !path.starts_with('/') {
        return Err(format!("expected a path starting with '/', found {path:?}"));
    }
    if !path.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "expected a path without spaces, control or non-ASCII characters (percent-encode them), found {path:?}"
        ));
    }
    Ok(())
}

/// A method as it goes on the request line: a token of capitals (GET, POST, PURGE...).
pub fn check_method(method: &str) -> Result<(), String> {
    if !method.is_empty() && method.bytes().all(|b| b.is_ascii_uppercase() || b == b'-') {
        Ok(())
    } else {
        Err(format!(
            "expected a method like GET or POST, found {method:?}"
        ))
    }
}

fn check_weight(weight: f64) -> Result<(), String> {
    if weight.is_finite() && weight > 0.0 {
        Ok(())
    } else {
        Err(format!(
            "expected a weight that is a finite number above 0, found {weight}"
        ))
    }
}

/// Each weight may be fine and their sum still overflow, which would break the picking.
fn check_total(entries: &[MixEntry]) -> Result<(), String> {
    if entries.iter().map(|e| e.weight).sum::<f64>().is_finite() {
        Ok(())
    } else {
        Err("expected weights whose sum is a finite number".into())
    }
}

/// A located error: the byte offset `span.start` of `text` as a 1-based line and column
/// (counted in characters, as editors count them).
fn located(text: &str, file: &str, span: Range<usize>, message: String) -> MixError {
    let start = span.start.min(text.len());
    let before = text.get(..start).unwrap_or(text);
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    MixError {
        file: file.to_owned(),
        line: before.matches('\n').count() + 1,
        column: before[line_start..].chars().count() + 1,
        message,
    }
}

/// Picks an entry per send: each with probability weight / sum, by binary search over the
/// cumulative weights, so a pick costs one random number and no allocation.
#[derive(Debug, Clone)]
pub(crate) struct Weights {
    cumulative: Box<[f64]>,
}

impl Weights {
    pub fn new(weights: impl IntoIterator<Item = f64>) -> Weights {
        let cumulative = weights
            .into_iter()
            .scan(0.0, |sum, w| {
                *sum += w;
                Some(*sum)
            })
            .collect();
        Weights { cumulative }
    }

    /// Only one request: no mix, nothing to draw.
    pub fn single() -> Weights {
        Weights::new([1.0])
    }

    pub fn pick(&self, rng: &mut fastrand::Rng) -> usize {
        let last = self.cumulative.len() - 1;
        if last == 0 {
            return 0;
        }
        let x = rng.f64() * self.cumulative[last];
        // The first entry whose cumulative weight exceeds the draw; `min` guards the rounding
        // of a draw that lands exactly on the total.
        self.cumulative.partition_point(|&c| c <= x).min(last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(text: &str) -> String {
        RequestMix::parse(text, "mix.toml").unwrap_err().to_string()
    }

    #[test]
    fn a_good_file_parses_with_default_weights() {
        let mix = RequestMix::parse(
            "# a comment\n[[request]]\npath = \"/?work_us=500\"   # path and query\nweight = 3\n\
             [[request]]\npath = \"/cluster1\"\n[[request]]\npath = '/x'\nweight = 0.5\n",
            "mix.toml",
        )
        .unwrap();
        assert_eq!(
            mix.entries,
            vec![
                MixEntry::new("/?work_us=500", 3.0),
                MixEntry::new("/cluster1", 1.0),
                MixEntry::new("/x", 0.5),
            ]
        );
        assert_eq!(mix.file.as_deref(), Some("mix.toml"));
    }

    #[test]
    fn mistakes_are_located_one_line_each() {
        let cases = [
            (
                "[[request]]\npath = \"/a\"\n[[request\n",
                "mix.toml:3:10: unclosed array table, expected `]]`",
            ),
            (
                "this is not toml\n",
                "mix.toml:1:6: key with no value, expected `=`",
            ),
            (
                "request = 5\n",
                "mix.toml:1:11: invalid type: integer `5`, expected a sequence",
            ),
            ("# nothing\n", "mix.toml:1:1: expected at least one [[request]] table"),
            (
                "[[request]]\npath = \"\"\n",
                "mix.toml:2:8: expected a path starting with '/', found an empty string",
            ),
            (
                "[[request]]\npath = \"cluster1\"\n",
                "mix.toml:2:8: expected a path starting with '/', found \"cluster1\"",
            ),
            (
                "[[request]]\n  path = \"/a b\"\n",
                "mix.toml:2:10: expected a path without spaces, control or non-ASCII characters (percent-encode them), found \"/a b\"",
            ),
            (
                "[[request]]\npath = \"/a\\tb\"\n",
                "mix.toml:2:8: expected a path without spaces, control or non-ASCII characters (percent-encode them), found \"/a\\tb\"",
            ),
            (
                "[[request]]\npath = \"/\"\nweight = 0\n",
                "mix.toml:3:10: expected a weight that is a finite number above 0, found 0",
            ),
            (
                "[[request]]\npath = \"/\"\nweight = -2.5\n",
                "mix.toml:3:10: expected a weight that is a finite number above 0, found -2.5",
            ),
            (
                "[[request]]\npath = \"/\"\nweight = inf\n",
                "mix.toml:3:10: expected a weight that is a finite number above 0, found inf",
            ),
            (
                "[[request]]\npath = \"/\"\nweight = nan\n",
                "mix.toml:3:10: expected a weight that is a finite number above 0, found NaN",
            ),
            (
                "[[request]]\npath = \"/\"\nmethod = \"post\"\n",
                "mix.toml:3:10: expected a method like GET or POST, found \"post\"",
            ),
            (
                "[[request]]\npath = \"/\"\nheaders = 1\n",
                "mix.toml:3:1: unknown field `headers`, expected one of `path`, `weight`, `method`, `body`",
            ),
            (
                "requests = []\n",
                "mix.toml:1:1: unknown field `requests`, expected `request`",
            ),
            (
                "[[request]]\nweight = 2\n",
                "mix.toml:1:1: missing field `path`",
            ),
            (
                "[[request]]\npath = \"/\"\nweight = \"3\"\n",
                "mix.toml:3:10: invalid type: string \"3\", expected f64",
            ),
        ];
        for (text, want) in cases {
            let got = error(text);
            assert_eq!(got, want, "{text:?}");
        }
    }

    #[test]
    fn a_missing_file_names_the_file() {
        let e = RequestMix::load(Path::new("/nonexistent/mix.toml")).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("/nonexistent/mix.toml: cannot read the request mix: "),
            "{e}"
        );
    }

    #[test]
    fn a_mix_built_in_code_is_checked_and_round_trips_through_toml() {
        let mix = RequestMix::new(vec![
            MixEntry::new("/?work_us=500", 3.0),
            MixEntry::new("/q\"x\\y", 1e-7),
            MixEntry::new("/big", 1e300),
        ])
        .unwrap();
        assert_eq!(mix.file, None);
        let text = mix.to_toml();
        assert!(text.starts_with(HEADER), "{text}");
        let back = RequestMix::parse(&text, "written.toml").unwrap();
        assert_eq!(back.entries, mix.entries);
        assert_eq!(
            RequestMix::new(vec![]).unwrap_err().to_string(),
            "request mix: expected at least one entry"
        );
        assert_eq!(
            RequestMix::new(vec![MixEntry::new("/", 1.0), MixEntry::new("/a", -1.0)])
                .unwrap_err()
                .to_string(),
            "request mix: entry 2: expected a weight that is a finite number above 0, found -1"
        );
        assert!(
            RequestMix::new(vec![MixEntry::new("/a", 1e308), MixEntry::new("/b", 1e308)]).is_err()
        );
    }

    /// 100 000 picks with a fixed seed land on each entry in proportion to its weight: Pearson's
    /// chi-square over the four entries stays under 16.27, the 0.1% critical value at three
    /// degrees of freedom (a fixed seed makes this deterministic; the bound says it is sane).
    #[test]
    fn picks_follow_the_weights() {
        let weights = [3.0, 1.0, 0.5, 5.5];
        let table = Weights::new(weights);
        let mut rng = fastrand::Rng::with_seed(7);
        let n = 100_000;
        let mut counts = [0u64; 4];
        for _ in 0..n {
            counts[table.pick(&mut rng)] += 1;
        }
        let total: f64 = weights.iter().sum();
        let chi2: f64 = weights
            .iter()
            .zip(counts)
            .map(|(w, c)| {
                let expected = n as f64 * w / total;
                (c as f64 - expected).powi(2) / expected
            })
            .sum();
        assert!(chi2 < 16.27, "chi-square {chi2}: {counts:?}");
        assert_eq!(Weights::single().pick(&mut rng), 0);
        // The same seed draws the same sequence.
        let (mut a, mut b) = (fastrand::Rng::with_seed(3), fastrand::Rng::with_seed(3));
        assert!((0..100).all(|_| table.pick(&mut a) == table.pick(&mut b)));
    }
}
