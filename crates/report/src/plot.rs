//! Inline SVG charts: axes with "nice" ticks (linear or log), line and step charts, grouped bar
//! charts with dot overlays, and legends. Hand-written so the page needs no script, font or
//! library from anywhere; each chart is one `<svg class="chart">` element.
//!
//! A chart with nothing to plot renders as `None`, so a caller cannot draw an empty frame by
//! accident. Plotted marks carry `class="line" | "bar" | "dot"` and the root a `data-points`
//! count, which is what the tests (and a curious reader of the page source) look at.

use std::fmt::Write as _;

use crate::markup::html as esc;

/// Tableau 10: distinguishable, and readable on white.
pub const PALETTE: [&str; 10] = [
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
    "#9c755f", "#bab0ac",
];

const WIDTH: f64 = 960.0;
const LEFT: f64 = 68.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 34.0;
const PLOT_H: f64 = 220.0;
const PLOT_W: f64 = WIDTH - LEFT - RIGHT;
const FONT: f64 = 11.0;
/// Rough advance of one character at `FONT` px in a sans-serif face, for layout only.
const CHAR_W: f64 = 6.4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scale {
    Linear,
    Log,
}

#[derive(Debug, Clone)]
pub struct Axis {
    pub label: String,
    pub scale: Scale,
    /// Keep zero in a linear domain (rates, latencies, utilization).
    pub include_zero: bool,
    /// Fixed ticks `(value, label)` instead of computed ones.
    pub ticks: Option<Vec<(f64, String)>>,
}

impl Axis {
    pub fn linear(label: &str) -> Axis {
        Axis {
            label: label.into(),
            scale: Scale::Linear,
            include_zero: false,
            ticks: None,
        }
    }

    pub fn from_zero(label: &str) -> Axis {
        Axis {
            include_zero: true,
            ..Axis::linear(label)
        }
    }

    pub fn log(label: &str) -> Axis {
        Axis {
            scale: Scale::Log,
            ..Axis::linear(label)
        }
    }

    pub fn with_ticks(mut self, ticks: Vec<(f64, String)>) -> Axis {
        self.ticks = Some(ticks);
        self
    }

    /// Log when the values span more than `decades` powers of ten, else linear from zero:
    /// latencies with a long tail stay readable without flattening the median.
    pub fn auto(label: &str, values: impl IntoIterator<Item = f64>, decades: f64) -> Axis {
        let (lo, hi) = values
            .into_iter()
            .filter(|v| v.is_finite() && *v > 0.0)
            .fold((f64::INFINITY, 0.0f64), |(lo, hi), v| {
                (lo.min(v), hi.max(v))
            });
        if hi > 0.0 && (hi / lo).log10() > decades {
            Axis::log(label)
        } else {
            Axis::from_zero(label)
        }
    }
}

/// An axis fitted to data: its domain and ticks.
#[derive(Debug, Clone, PartialEq)]
pub struct Fitted {
    pub lo: f64,
    pub hi: f64,
    pub scale: Scale,
    pub ticks: Vec<(f64, String)>,
}

impl Fitted {
    /// Where `v` falls along the axis, 0.0 at `lo` and 1.0 at `hi`.
    pub fn unit(&self, v: f64) -> f64 {
        match self.scale {
            Scale::Linear => (v - self.lo) / (self.hi - self.lo),
            Scale::Log => (v.log10() - self.lo.log10()) / (self.hi.log10() - self.lo.log10()),
        }
    }

    /// Whether `v` can be placed at all (log axes cannot show zero or negatives).
    pub fn admits(&self, v: f64) -> bool {
        v.is_finite() && (self.scale == Scale::Linear || v > 0.0)
    }
}

/// 1, 2, 2.5 or 5 times a power of ten, the smallest not below `raw`.
pub fn nice_step(raw: f64) -> f64 {
    if !(raw.is_finite() && raw > 0.0) {
        return 1.0;
    }
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    let nice = if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 2.5 {
        2.5
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * mag
}

/// Decimals needed to write multiples of `step` exactly (up to 6).
fn decimals_for(step: f64) -> usize {
    (0..=6)
        .find(|&d| {
            let scaled = step * 10f64.powi(d as i32);
            (scaled - scaled.round()).abs() < 1e-6 * scaled.max(1.0)
        })
        .unwrap_or(6)
}

/// A tick label: thousands as `k` when the step allows it, otherwise just enough decimals.
pub fn tick_label(v: f64, step: f64) -> String {
    let v = if v.abs() < step * 1e-9 { 0.0 } else { v };
    if v.abs() >= 10_000.0 && step >= 1000.0 {
        let d = decimals_for(step / 1000.0);
        return format!("{:.*}k", d, v / 1000.0);
    }
    format!("{:.*}", decimals_for(step), v)
}

/// Fits `axis` to `values`; `None` when nothing plottable is among them.
pub fn fit(axis: &Axis, values: &[f64]) -> Option<Fitted> {
    let usable: Vec<f64> = values
        .iter()
        .copied()
        .filter(|v| v.is_finite() && (axis.scale == Scale::Linear || *v > 0.0))
        .collect();
    if usable.is_empty() {
        return None;
    }
    let mut lo = usable.iter().copied().fold(f64::INFINITY, f64::min);
    let mut hi = usable.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if let Some(ticks) = &axis.ticks {
        // Custom ticks: the domain spans data and ticks, unrounded.
        for &(t, _) in ticks {
            lo = lo.min(t);
            hi = hi.max(t);
        }
        if lo == hi {
            hi = lo + 1.0;
        }
        let ticks = ticks
            .iter()
            .filter(|(t, _)| *t >= lo && *t <= hi)
            .cloned()
            .collect();
        return Some(Fitted {
            lo,
            hi,
            scale: axis.scale,
            ticks,
        });
    }
    match axis.scale {
        Scale::Linear => {
            if axis.include_zero {
                lo = lo.min(0.0);
                hi = hi.max(0.0);
            }
            if lo == hi {
                // One value: give it room rather than divide by zero.
                let pad = if lo == 0.0 { 1.0 } else { lo.abs() * 0.5 };
                lo = if axis.include_zero && lo >= 0.0 {
                    0.0
                } else {
                    lo - pad
                };
                hi += pad;
            }
            let step = nice_step((hi - lo) / 5.0);
            // Tolerate float noise so a value on a tick does not add a tick beyond it.
            let first = (lo / step + 1e-9).floor() as i64;
            let last = (hi / step - 1e-9).ceil() as i64;
            let ticks = (first..=last)
                .map(|i| {
                    let v = i as f64 * step;
                    (v, tick_label(v, step))
                })
                .collect();
            Some(Fitted {
                lo: first as f64 * step,
                hi: last as f64 * step,
                scale: Scale::Linear,
                ticks,
            })
        }
        Scale::Log => {
            let first = (lo.log10() + 1e-9).floor() as i32;
            let mut last = (hi.log10() - 1e-9).ceil() as i32;
            if last <= first {
                last = first + 1;
            }
            // Few decades: label 2× and 5× too, so the axis is not two bare ticks.
            let mults: &[f64] = if last - first <= 2 {
                &[1.0, 2.0, 5.0]
            } else {
                &[1.0]
            };
            let mut ticks = Vec::new();
            for e in first..=last {
                let p = 10f64.powi(e);
                for m in mults {
                    let v = m * p;
                    if v <= 10f64.powi(last) * (1.0 + 1e-9) {
                        ticks.push((v, tick_label(v, p.min(v))));
                    }
                }
            }
            Some(Fitted {
                lo: 10f64.powi(first),
                hi: 10f64.powi(last),
                scale: Scale::Log,
                ticks,
            })
        }
    }
}

#[derive(Debug, Clone)]
pub struct Line {
    pub name: String,
    /// `(x, y)`; a non-finite `y` breaks the line (a gap between runs).
    pub points: Vec<(f64, f64)>,
    pub dashed: bool,
    pub color: Option<&'static str>,
    pub shape: Shape,
}

impl Line {
    pub fn new(name: impl Into<String>, points: Vec<(f64, f64)>) -> Line {
        Line {
            name: name.into(),
            points,
            dashed: false,
            color: None,
            shape: Shape::Straight,
        }
    }

    /// Each value holds until the next point's x.
    pub fn step(mut self) -> Line {
        self.shape = Shape::Step;
        self
    }

    pub fn dashed(mut self) -> Line {
        self.dashed = true;
        self
    }

    pub fn color(mut self, c: &'static str) -> Line {
        self.color = Some(c);
        self
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Straight,
    /// Each value holds until the next x (targets, ramp steps).
    Step,
}

#[derive(Debug, Clone)]
pub struct LineChart {
    pub title: String,
    pub x: Axis,
    pub y: Axis,
    pub lines: Vec<Line>,
    /// Draw a dot at every point (short series); isolated points always get one.
    pub markers: bool,
}

#[derive(Debug, Clone)]
pub struct Bars {
    pub name: String,
    /// One per category; `None` leaves the slot empty.
    pub values: Vec<Option<f64>>,
    pub color: Option<&'static str>,
}

/// Dots over a bar chart, e.g. each round's figure over the merged one.
#[derive(Debug, Clone)]
pub struct Dots {
    pub name: String,
    /// Align with this bar series' bars; otherwise centered in the category.
    pub over: Option<usize>,
    /// `(category index, value)`.
    pub points: Vec<(usize, f64)>,
}

#[derive(Debug, Clone)]
pub struct BarChart {
    pub title: String,
    pub categories: Vec<String>,
    pub y: Axis,
    pub bars: Vec<Bars>,
    pub dots: Vec<Dots>,
}

#[derive(Debug, Clone)]
pub enum Chart {
    Line(LineChart),
    Bar(BarChart),
}

impl Chart {
    /// The `<svg>` element, or `None` when there is nothing to plot.
    pub fn render(&self) -> Option<String> {
        match self {
            Chart::Line(c) => render_line(c),
            Chart::Bar(c) => render_bar(c),
        }
    }
}

fn fmt(v: f64) -> String {
    // A tenth of a pixel is plenty and keeps the page small.
    let s = format!("{v:.1}");
    s.strip_suffix(".0").map(str::to_owned).unwrap_or(s)
}

/// A legend entry: name, color, whether it is drawn dashed, whether it is a dot.
struct Key<'a> {
    name: &'a str,
    color: &'a str,
    dashed: bool,
    dot: bool,
}

impl<'a> Key<'a> {
    /// A solid swatch: a bar, or an undashed line.
    fn solid(name: &'a str, color: &'a str) -> Key<'a> {
        Key {
            name,
            color,
            dashed: false,
            dot: false,
        }
    }
}

/// Lays legend entries out in rows under the plot; returns the markup and its height.
fn legend(keys: &[Key<'_>], top: f64) -> (String, f64) {
    if keys.len() < 2 {
        return (String::new(), 0.0);
    }
    let mut out = String::from(r#"<g class="legend">"#);
    let (mut x, mut y) = (LEFT, top + 12.0);
    for k in keys {
        let w = 22.0 + k.name.chars().count() as f64 * CHAR_W + 16.0;
        if x + w > WIDTH - RIGHT && x > LEFT {
            x = LEFT;
            y += 18.0;
        }
        if k.dot {
            let _ = write!(
                out,
                r#"<circle cx="{}" cy="{}" r="3.5" fill="{}"/>"#,
                fmt(x + 8.0),
                fmt(y - 4.0),
                k.color
            );
        } else {
            let _ = write!(
                out,
                r#"<line x1="{}" y1="{y2}" x2="{}" y2="{y2}" stroke="{}" stroke-width="{}"{}/>"#,
                fmt(x),
                fmt(x + 16.0),
                k.color,
                if k.dashed { 2 } else { 6 },
                if k.dashed {
                    r#" stroke-dasharray="4 3""#
                } else {
                    ""
                },
                y2 = fmt(y - 4.0),
            );
        }
        let _ = write!(
            out,
            r#"<text x="{}" y="{}">{}</text>"#,
            fmt(x + 22.0),
            fmt(y),
            esc(k.name)
        );
        x += w;
    }
    out.push_str("</g>");
    (out, y - top + 8.0)
}

/// Where `v` lands across the plot area on axis `x`.
fn x_pos(x: &Fitted, v: f64) -> f64 {
    LEFT + PLOT_W * x.unit(v)
}

/// Where `v` lands down the plot area on axis `y`.
fn y_pos(y: &Fitted, v: f64) -> f64 {
    TOP + PLOT_H * (1.0 - y.unit(v))
}

/// A value as a mark's tooltip writes it: about three significant digits.
fn value_text(v: f64) -> String {
    tick_label(v, v.abs().max(1e-3) / 100.0)
}

/// The frame shared by every chart: root element, title, y grid and labels.
struct Frame {
    out: String,
}

impl Frame {
    fn open(title: &str, height: f64, points: usize) -> Frame {
        let mut out = String::new();
        let _ = write!(
            out,
            r##"<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" aria-label="{t}" data-points="{points}" font-family="system-ui, -apple-system, 'Segoe UI', sans-serif" font-size="{FONT}" fill="#333">"##,
            w = WIDTH,
            h = fmt(height),
            t = esc(title),
        );
        let _ = write!(
            out,
            r#"<title>{}</title><text class="title" x="{LEFT}" y="20" font-size="13" font-weight="600">{}</text>"#,
            esc(title),
            esc(title)
        );
        Frame { out }
    }

    fn y_axis(&mut self, y: &Fitted, label: &str) {
        for (v, text) in &y.ticks {
            let py = y_pos(y, *v);
            let _ = write!(
                self.out,
                r##"<line x1="{LEFT}" y1="{py}" x2="{x2}" y2="{py}" stroke="#e4e4e4"/><text x="{tx}" y="{ty}" text-anchor="end">{}</text>"##,
                esc(text),
                py = fmt(py),
                x2 = fmt(LEFT + PLOT_W),
                tx = fmt(LEFT - 6.0),
                ty = fmt(py + 4.0),
            );
        }
        let _ = write!(
            self.out,
            r#"<text x="14" y="{cy}" transform="rotate(-90 14 {cy})" text-anchor="middle">{}</text>"#,
            esc(label),
            cy = fmt(TOP + PLOT_H / 2.0),
        );
    }

    /// A numeric x axis: grid, ticks, their labels and the axis label under them.
    fn x_axis(&mut self, x: &Fitted, label: &str) {
        let below = TOP + PLOT_H;
        for (v, text) in &x.ticks {
            let px = fmt(x_pos(x, *v));
            let _ = write!(
                self.out,
                r##"<line x1="{px}" y1="{TOP}" x2="{px}" y2="{b}" stroke="#f0f0f0"/><line x1="{px}" y1="{b}" x2="{px}" y2="{b5}" stroke="#888"/><text x="{px}" y="{ty}" text-anchor="middle">{}</text>"##,
                esc(text),
                b = fmt(below),
                b5 = fmt(below + 5.0),
                ty = fmt(below + 17.0),
            );
        }
        let _ = write!(
            self.out,
            r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
            fmt(LEFT + PLOT_W / 2.0),
            fmt(below + 34.0),
            esc(label)
        );
    }

    fn axes_lines(&mut self) {
        let _ = write!(
            self.out,
            r##"<path d="M{LEFT} {TOP}V{b}H{r}" fill="none" stroke="#888"/>"##,
            b = fmt(TOP + PLOT_H),
            r = fmt(WIDTH - RIGHT),
        );
    }

    /// The plotted marks and the legend, then the closing tag.
    fn close(mut self, marks: &Marks<'_>, legend_svg: &str) -> String {
        self.out.push_str(&marks.svg);
        self.out.push_str(legend_svg);
        self.out.push_str("</svg>");
        self.out
    }
}

/// Plotted marks as they are drawn: their markup, how many, and a legend key per series
/// that drew any.
#[derive(Default)]
struct Marks<'a> {
    svg: String,
    points: usize,
    keys: Vec<Key<'a>>,
}

impl<'a> Marks<'a> {
    /// A series gets a legend key only when it drew a mark after `points_before`.
    fn key_if_drawn(&mut self, points_before: usize, key: Key<'a>) {
        if self.points > points_before {
            self.keys.push(key);
        }
    }
}

fn color_at(i: usize, fixed: Option<&'static str>) -> &'static str {
    fixed.unwrap_or(PALETTE[i % PALETTE.len()])
}

fn render_line(c: &LineChart) -> Option<String> {
    let xs: Vec<f64> = c
        .lines
        .iter()
        .flat_map(|l| l.points.iter().map(|p| p.0))
        .collect();
    let ys: Vec<f64> = c
        .lines
        .iter()
        .flat_map(|l| l.points.iter().filter(|p| p.0.is_finite()).map(|p| p.1))
        .collect();
    let fx = fit(&c.x, &xs)?;
    let fy = fit(&c.y, &ys)?;
    let mut marks = Marks::default();
    for (i, line) in c.lines.iter().enumerate() {
        line_marks(
            &mut marks,
            line,
            color_at(i, line.color),
            c.markers,
            (&fx, &fy),
        );
    }
    if marks.points == 0 {
        return None;
    }
    let below = TOP + PLOT_H;
    let (legend_svg, legend_h) = legend(&marks.keys, below + 44.0);
    let height = below + 44.0 + legend_h + 6.0;
    let mut f = Frame::open(&c.title, height, marks.points);
    f.y_axis(&fy, &c.y.label);
    f.x_axis(&fx, &c.x.label);
    f.axes_lines();
    Some(f.close(&marks, &legend_svg))
}

/// Runs of plottable points; each is drawn as one subpath.
fn segments(points: &[(f64, f64)], fx: &Fitted, fy: &Fitted) -> Vec<Vec<(f64, f64)>> {
    let mut segments: Vec<Vec<(f64, f64)>> = vec![Vec::new()];
    for p in points {
        if fx.admits(p.0) && fy.admits(p.1) {
            segments.last_mut().expect("never empty").push(*p);
        } else if !segments.last().expect("never empty").is_empty() {
            segments.push(Vec::new());
        }
    }
    segments.retain(|s| !s.is_empty());
    segments
}

/// One line: its path, its dots (every point with `markers`, else only isolated ones) and its
/// legend key.
fn line_marks<'a>(
    marks: &mut Marks<'a>,
    line: &'a Line,
    color: &'a str,
    markers: bool,
    (fx, fy): (&Fitted, &Fitted),
) {
    let (px, py) = (|v| x_pos(fx, v), |v| y_pos(fy, v));
    let mut d = String::new();
    let mut dots = String::new();
    for seg in segments(&line.points, fx, fy) {
        marks.points += seg.len();
        let _ = write!(d, "M{} {}", fmt(px(seg[0].0)), fmt(py(seg[0].1)));
        for w in seg.windows(2) {
            let _ = match line.shape {
                Shape::Straight => write!(d, "L{} {}", fmt(px(w[1].0)), fmt(py(w[1].1))),
                Shape::Step => write!(d, "H{}V{}", fmt(px(w[1].0)), fmt(py(w[1].1))),
            };
        }
        if markers || seg.len() == 1 {
            for &(x, y) in &seg {
                let _ = write!(
                    dots,
                    r#"<circle class="dot" cx="{}" cy="{}" r="3" fill="{color}"><title>{}: {} at {}</title></circle>"#,
                    fmt(px(x)),
                    fmt(py(y)),
                    esc(&line.name),
                    esc(&value_text(y)),
                    esc(&value_text(x)),
                );
            }
        }
    }
    if d.is_empty() {
        return;
    }
    let _ = write!(
        marks.svg,
        r#"<path class="line" d="{d}" fill="none" stroke="{color}" stroke-width="2" stroke-linejoin="round"{}><title>{}</title></path>{dots}"#,
        if line.dashed {
            r#" stroke-dasharray="5 4""#
        } else {
            ""
        },
        esc(&line.name),
    );
    marks.keys.push(Key {
        dashed: line.dashed,
        ..Key::solid(&line.name, color)
    });
}

/// Category labels longer than this are cut (the full text stays in the bar's tooltip).
const MAX_LABEL: usize = 22;

fn short(s: &str) -> String {
    if s.chars().count() <= MAX_LABEL {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(MAX_LABEL - 1).collect();
        t.push('…');
        t
    }
}

/// Where a bar chart's marks go: one slot per category, its bars side by side in the middle
/// 80% of it.
struct BarLayout {
    y: Fitted,
    slot: f64,
    group: f64,
    bar_w: f64,
    /// Where bars start: zero, or the bottom of a log axis.
    base: f64,
}

impl BarLayout {
    fn new(c: &BarChart, y: Fitted) -> BarLayout {
        let slot = PLOT_W / c.categories.len() as f64;
        let group = slot * 0.8;
        let base = y_pos(
            &y,
            match y.scale {
                Scale::Linear => y.lo.max(0.0).min(y.hi),
                Scale::Log => y.lo,
            },
        );
        BarLayout {
            slot,
            group,
            bar_w: group / c.bars.len().max(1) as f64,
            base,
            y,
        }
    }

    /// The x of `offset` bar widths into category `ci`'s group.
    fn x(&self, ci: usize, offset: f64) -> f64 {
        LEFT + self.slot * ci as f64 + (self.slot - self.group) / 2.0 + self.bar_w * offset
    }
}

fn render_bar(c: &BarChart) -> Option<String> {
    if c.categories.is_empty() {
        return None;
    }
    let mut ys: Vec<f64> = c
        .bars
        .iter()
        .flat_map(|b| b.values.iter().flatten().copied())
        .collect();
    ys.extend(c.dots.iter().flat_map(|d| d.points.iter().map(|p| p.1)));
    let layout = BarLayout::new(c, fit(&c.y, &ys)?);
    let mut marks = Marks::default();
    for (si, b) in c.bars.iter().enumerate() {
        bar_marks(&mut marks, c, &layout, si, b);
    }
    for (di, d) in c.dots.iter().enumerate() {
        dot_marks(&mut marks, c, &layout, di, d);
    }
    if marks.points == 0 {
        return None;
    }
    // Rotate category labels that would collide.
    let longest = c
        .categories
        .iter()
        .map(|s| short(s).chars().count())
        .max()
        .unwrap_or(0) as f64;
    let rotate = longest * CHAR_W > layout.slot * 0.95;
    let label_h = if rotate {
        longest * CHAR_W * 0.65 + 16.0
    } else {
        22.0
    };
    let below = TOP + PLOT_H;
    let (legend_svg, legend_h) = legend(&marks.keys, below + label_h + 6.0);
    let height = below + label_h + 6.0 + legend_h + 6.0;
    let mut f = Frame::open(&c.title, height, marks.points);
    f.y_axis(&layout.y, &c.y.label);
    category_labels(&mut f, c, &layout, rotate);
    f.axes_lines();
    Some(f.close(&marks, &legend_svg))
}

/// `<title>` of a bar or dot: category, series and value.
fn mark_title(category: &str, series: &str, v: f64) -> String {
    format!(
        "<title>{} — {}: {}</title>",
        esc(category),
        esc(series),
        esc(&value_text(v))
    )
}

/// Series `si`'s bars, and its legend key when it drew any.
fn bar_marks<'a>(marks: &mut Marks<'a>, c: &BarChart, l: &BarLayout, si: usize, b: &'a Bars) {
    let color = color_at(si, b.color);
    let before = marks.points;
    for (ci, v) in b.values.iter().enumerate().take(c.categories.len()) {
        let Some(v) = v.filter(|v| l.y.admits(*v)) else {
            continue;
        };
        let py = y_pos(&l.y, v);
        let (y0, y1) = (py.min(l.base), py.max(l.base));
        let _ = write!(
            marks.svg,
            r#"<rect class="bar" x="{}" y="{}" width="{}" height="{}" fill="{color}">{}</rect>"#,
            fmt(l.x(ci, si as f64) + 0.5),
            fmt(y0),
            fmt((l.bar_w - 1.0).max(1.0)),
            fmt((y1 - y0).max(0.5)),
            mark_title(&c.categories[ci], &b.name, v),
        );
        marks.points += 1;
    }
    marks.key_if_drawn(before, Key::solid(&b.name, color));
}

/// Dot series `di`, over its bar series or centered in the category, and its legend key when
/// it drew any.
fn dot_marks<'a>(marks: &mut Marks<'a>, c: &BarChart, l: &BarLayout, di: usize, d: &'a Dots) {
    // Dots are dark so they read on top of any bar color.
    let color = ["#222", "#7a0177", "#00441b"][di % 3];
    let n = c.categories.len();
    let before = marks.points;
    for &(ci, v) in d.points.iter().filter(|p| p.0 < n && l.y.admits(p.1)) {
        let cx = match d.over {
            Some(si) => l.x(ci, si as f64 + 0.5),
            None => LEFT + l.slot * (ci as f64 + 0.5),
        };
        let _ = write!(
            marks.svg,
            r##"<circle class="dot" cx="{}" cy="{}" r="3.5" fill="{color}" stroke="#fff" stroke-width="1">{}</circle>"##,
            fmt(cx),
            fmt(y_pos(&l.y, v)),
            mark_title(&c.categories[ci], &d.name, v),
        );
        marks.points += 1;
    }
    marks.key_if_drawn(
        before,
        Key {
            dot: true,
            ..Key::solid(&d.name, color)
        },
    );
}

fn category_labels(f: &mut Frame, c: &BarChart, l: &BarLayout, rotate: bool) {
    let y = fmt(TOP + PLOT_H + 15.0);
    for (ci, cat) in c.categories.iter().enumerate() {
        let x = fmt(LEFT + l.slot * (ci as f64 + 0.5));
        let _ = if rotate {
            write!(
                f.out,
                r#"<text x="{x}" y="{y}" text-anchor="end" transform="rotate(-40 {x} {y})">{}</text>"#,
                esc(&short(cat)),
            )
        } else {
            write!(
                f.out,
                r#"<text x="{x}" y="{y}" text-anchor="middle">{}</text>"#,
                esc(&short(cat))
            )
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(f: &Fitted) -> Vec<f64> {
        f.ticks.iter().map(|t| t.0).collect()
    }

    #[test]
    fn linear_axes_get_round_ticks_that_cover_the_data() {
        let f = fit(&Axis::from_zero("ms"), &[3.0, 97.0]).unwrap();
        assert_eq!((f.lo, f.hi), (0.0, 100.0));
        assert_eq!(values(&f), vec![0.0, 20.0, 40.0, 60.0, 80.0, 100.0]);
        assert_eq!(f.ticks[1].1, "20");

        let f = fit(&Axis::linear("s"), &[0.13, 0.91]).unwrap();
        assert!(f.lo <= 0.13 && f.hi >= 0.91);
        assert_eq!(f.ticks[0].1, "0.0");
        assert!(f.ticks.iter().any(|t| t.1 == "0.4"), "{:?}", f.ticks);

        let f = fit(&Axis::from_zero("req/s"), &[0.0, 41_000.0]).unwrap();
        assert_eq!(f.hi, 50_000.0);
        assert_eq!(f.ticks.last().unwrap().1, "50k");
    }

    #[test]
    fn degenerate_and_empty_data() {
        let f = fit(&Axis::from_zero("x"), &[5.0, 5.0]).unwrap();
        assert!(f.lo == 0.0 && f.hi >= 5.0);
        let f = fit(&Axis::linear("x"), &[0.0]).unwrap();
        assert!(f.lo < 0.0 || f.hi > 0.0);
        assert!(fit(&Axis::linear("x"), &[]).is_none());
        assert!(fit(&Axis::linear("x"), &[f64::NAN]).is_none());
        // Log axes ignore what they cannot show.
        assert!(fit(&Axis::log("x"), &[0.0, -1.0]).is_none());
    }

    #[test]
    fn log_axes_span_whole_decades() {
        let f = fit(&Axis::log("ms"), &[0.8, 450.0]).unwrap();
        assert_eq!((f.lo, f.hi), (0.1, 1000.0));
        assert_eq!(values(&f), vec![0.1, 1.0, 10.0, 100.0, 1000.0]);
        assert_eq!(f.ticks.last().unwrap().1, "1000");
        assert!((f.unit(10.0) - 0.5).abs() < 1e-12);
        // A single decade gets 2× and 5× ticks too.
        let f = fit(&Axis::log("ms"), &[12.0, 80.0]).unwrap();
        assert_eq!(values(&f), vec![10.0, 20.0, 50.0, 100.0]);
    }

    #[test]
    fn scaling_maps_the_domain_onto_the_plot() {
        let f = fit(&Axis::from_zero("x"), &[0.0, 200.0]).unwrap();
        assert_eq!(f.unit(0.0), 0.0);
        assert_eq!(f.unit(200.0), 1.0);
        assert_eq!(f.unit(100.0), 0.5);
    }

    #[test]
    fn nice_steps() {
        assert_eq!(nice_step(17.0), 20.0);
        assert_eq!(nice_step(0.21), 0.25);
        assert_eq!(nice_step(3.3), 5.0);
        assert_eq!(nice_step(700.0), 1000.0);
        assert_eq!(tick_label(0.25, 0.25), "0.25");
        assert_eq!(tick_label(15_000.0, 5000.0), "15k");
        assert_eq!(tick_label(12_500.0, 2500.0), "12.5k");
    }

    #[test]
    fn auto_axis_goes_log_for_long_tails() {
        assert_eq!(Axis::auto("ms", [1.0, 5000.0], 2.0).scale, Scale::Log);
        assert_eq!(Axis::auto("ms", [10.0, 50.0], 2.0).scale, Scale::Linear);
    }

    #[test]
    fn charts_without_data_do_not_render() {
        let c = Chart::Line(LineChart {
            title: "t".into(),
            x: Axis::linear("x"),
            y: Axis::from_zero("y"),
            lines: vec![Line::new("a", vec![])],
            markers: false,
        });
        assert!(c.render().is_none());
        let c = Chart::Bar(BarChart {
            title: "t".into(),
            categories: vec!["a".into()],
            y: Axis::from_zero("y"),
            bars: vec![Bars {
                name: "b".into(),
                values: vec![None],
                color: None,
            }],
            dots: vec![],
        });
        assert!(c.render().is_none());
    }

    #[test]
    fn rendered_charts_count_and_escape_their_marks() {
        let c = Chart::Line(LineChart {
            title: "CPU <worker>".into(),
            x: Axis::linear("s"),
            y: Axis::from_zero("%"),
            lines: vec![
                Line::new(
                    "i-1 & <b>",
                    vec![(0.0, 1.0), (1.0, 2.0), (2.0, f64::NAN), (3.0, 4.0)],
                ),
                Line::new("i-2", vec![(0.0, 3.0), (1.0, 1.0)])
                    .dashed()
                    .step(),
            ],
            markers: false,
        });
        let svg = c.render().unwrap();
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert!(svg.contains(r#"data-points="5""#), "{svg}");
        assert_eq!(svg.matches(r#"class="line""#).count(), 2);
        // The point after the gap stands alone, so it gets a dot.
        assert_eq!(svg.matches(r#"class="dot""#).count(), 1);
        assert!(svg.contains("i-1 &amp; &lt;b&gt;"));
        assert!(svg.contains("CPU &lt;worker&gt;"));
        assert!(!svg.contains("<b>") && !svg.contains("<worker>"));

        let c = Chart::Bar(BarChart {
            title: "bars".into(),
            categories: vec!["a".into(), "b\"".into()],
            y: Axis::from_zero("n"),
            bars: vec![Bars {
                name: "n".into(),
                values: vec![Some(3.0), Some(5.0)],
                color: None,
            }],
            dots: vec![Dots {
                name: "round".into(),
                over: Some(0),
                points: vec![(0, 2.0), (1, 6.0), (7, 1.0)],
            }],
        });
        let svg = c.render().unwrap();
        assert_eq!(svg.matches(r#"class="bar""#).count(), 2);
        // The dot for a category that does not exist is dropped.
        assert_eq!(svg.matches(r#"class="dot""#).count(), 2);
        assert!(svg.contains("b&quot;"));
    }
}
