//! SVG charts drawn here: bars (vertical, horizontal), heat maps, lines. Numbers go out with at
//! most one decimal; every text from a record goes through [`Esc`].

use std::fmt::{self, Display, Write};

use super::Esc;

/// A coordinate: at most one decimal, never NaN or infinite (0 then).
#[derive(Clone, Copy)]
pub struct N(pub f64);

impl Display for N {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = if self.0.is_finite() {
            (self.0 * 10.0).round() / 10.0
        } else {
            0.0
        };
        if v == v.trunc() {
            write!(f, "{}", v as i64)
        } else {
            write!(f, "{v:.1}")
        }
    }
}

/// Series colours (Tableau 10), in order; they repeat beyond ten.
pub const PALETTE: [&str; 10] = [
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac",
];

pub fn color(i: usize) -> &'static str {
    PALETTE[i % PALETTE.len()]
}

/// An SVG element being written.
pub struct Svg {
    pub s: String,
}

impl Svg {
    pub fn new(w: f64, h: f64, label: &str) -> Self {
        let mut s = String::with_capacity(4096);
        let _ = write!(
            s,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {w} {h}\" width=\"{w}\" height=\"{h}\" role=\"img\" aria-label=\"{}\">",
            Esc(label),
            w = N(w),
            h = N(h)
        );
        Self { s }
    }

    pub fn finish(mut self) -> String {
        self.s.push_str("</svg>");
        self.s
    }

    /// A rectangle (negative sizes are drawn as empty); `title` shows on hover.
    pub fn rect(&mut self, x: f64, y: f64, w: f64, h: f64, class: &str, title: Option<&str>) {
        let _ = write!(
            self.s,
            "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" class=\"{class}\"",
            N(x),
            N(y),
            N(w.max(0.0)),
            N(h.max(0.0))
        );
        match title {
            Some(t) => {
                let _ = write!(self.s, "><title>{}</title></rect>", Esc(t));
            }
            None => self.s.push_str("/>"),
        }
    }

    pub fn line(&mut self, x1: f64, y1: f64, x2: f64, y2: f64, class: &str) {
        let _ = write!(
            self.s,
            "<line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" class=\"{class}\"/>",
            N(x1),
            N(y1),
            N(x2),
            N(y2)
        );
    }

    /// Text; `anchor` is `start`, `middle` or `end`.
    pub fn text(&mut self, x: f64, y: f64, anchor: &str, class: &str, text: &str) {
        let _ = write!(self.s, "<text x=\"{}\" y=\"{}\"", N(x), N(y));
        if anchor != "start" {
            let _ = write!(self.s, " text-anchor=\"{anchor}\"");
        }
        if !class.is_empty() {
            let _ = write!(self.s, " class=\"{class}\"");
        }
        let _ = write!(self.s, ">{}</text>", Esc(text));
    }

    /// Text turned 90° counter-clockwise, ending at its anchor and reading downwards from it
    /// (labels under an axis).
    pub fn text_up(&mut self, x: f64, y: f64, text: &str) {
        let _ = write!(
            self.s,
            "<text x=\"{x}\" y=\"{y}\" text-anchor=\"end\" transform=\"rotate(-90 {x} {y})\" class=\"m\">{}</text>",
            Esc(text),
            x = N(x),
            y = N(y)
        );
    }

    /// A line through `points` in `color` (a path of relative steps: short).
    pub fn polyline(&mut self, points: &[(f64, f64)], color: &str, title: Option<&str>) {
        let round = |v: f64| if v.is_finite() { (v * 10.0).round() / 10.0 } else { 0.0 };
        self.s.push_str("<path class=\"line\" d=\"");
        let mut last = (0.0, 0.0);
        for (i, (x, y)) in points.iter().enumerate() {
            let (x, y) = (round(*x), round(*y));
            if i == 0 {
                let _ = write!(self.s, "M{} {}l", N(x), N(y));
            } else {
                let _ = write!(self.s, "{} {} ", N(x - last.0), N(y - last.1));
            }
            last = (x, y);
        }
        if points.len() == 1 {
            self.s.push_str("0 0");
        }
        let _ = write!(self.s, "\" stroke=\"{color}\"");
        match title {
            Some(t) => {
                let _ = write!(self.s, "><title>{}</title></path>", Esc(t));
            }
            None => self.s.push_str("/>"),
        }
    }

    pub fn circle(&mut self, x: f64, y: f64, r: f64, class: &str, title: &str) {
        let _ = write!(
            self.s,
            "<circle cx=\"{}\" cy=\"{}\" r=\"{}\" class=\"{class}\"><title>{}</title></circle>",
            N(x),
            N(y),
            N(r),
            Esc(title)
        );
    }
}

/// A round top for an axis from 0 to `max`, and its step: 1, 2 or 5 × a power of ten, at most
/// `ticks` steps.
pub fn nice(max: f64, ticks: usize) -> (f64, f64) {
    if !(max.is_finite() && max > 0.0) {
        return (1.0, 1.0);
    }
    let raw = max / ticks.max(1) as f64;
    let pow = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * pow)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * pow);
    ((max / step).ceil() * step, step)
}

/// An axis value as a label: `1,200`, `0.5`, `2.5k` is not used (counts stay exact).
pub fn label(v: f64) -> String {
    if v == v.trunc() && v.abs() < 1e15 {
        super::super::thousands(v.abs() as u64).to_string()
    } else if v.abs() >= 10.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// A plot area inside an SVG: value → pixel for a linear y axis from 0 to `top`, and x from
/// `x_min` to `x_max`.
pub struct Plot {
    pub svg: Svg,
    pub left: f64,
    pub top_px: f64,
    pub width: f64,
    pub height: f64,
    pub y_top: f64,
    pub x_min: f64,
    pub x_max: f64,
}

impl Plot {
    /// A plot of `w` × `h` pixels with room for labels left (`left`) and below (`bottom`); y
    /// gridlines and labels from 0 to `y_max` (rounded up), `fmt` for the labels.
    pub fn new(
        w: f64,
        h: f64,
        left: f64,
        bottom: f64,
        y_max: f64,
        label_of: impl Fn(f64) -> String,
        name: &str,
    ) -> Self {
        let (y_top, step) = nice(y_max, 5);
        let mut svg = Svg::new(w, h, name);
        let (top_px, width, height) = (10.0, w - left - 12.0, h - 10.0 - bottom);
        // Gridlines in one path, their labels in one group.
        let (mut grid, mut labels) = (String::new(), String::new());
        let mut v = 0.0;
        while v <= y_top + step / 2.0 {
            let y = top_px + height - v / y_top * height;
            let _ = write!(grid, "M{} {}h{}", N(left), N(y), N(width));
            let _ = write!(
                labels,
                "<text x=\"{}\" y=\"{}\">{}</text>",
                N(left - 4.0),
                N(y + 4.0),
                Esc(&label_of(v))
            );
            v += step;
        }
        let _ = write!(
            svg.s,
            "<path class=\"grid\" d=\"{grid}\"/><g text-anchor=\"end\" class=\"m\">{labels}</g>"
        );
        svg.line(left, top_px + height, left + width, top_px + height, "axis");
        Self {
            svg,
            left,
            top_px,
            width,
            height,
            y_top,
            x_min: 0.0,
            x_max: 1.0,
        }
    }

    pub fn y(&self, v: f64) -> f64 {
        self.top_px + self.height - (v / self.y_top).clamp(0.0, 1.05) * self.height
    }

    pub fn x(&self, v: f64) -> f64 {
        let span = (self.x_max - self.x_min).max(f64::MIN_POSITIVE);
        self.left + (v - self.x_min) / span * self.width
    }

    /// X gridlines and labels at round values between `x_min` and `x_max`.
    pub fn x_axis(&mut self, label_of: impl Fn(f64) -> String) {
        let (_, step) = nice(self.x_max - self.x_min, 8);
        let mut v = (self.x_min / step).ceil() * step;
        while v <= self.x_max + step * 1e-9 {
            let x = self.x(v);
            self.svg
                .line(x, self.top_px + self.height, x, self.top_px + self.height + 4.0, "axis");
            self.svg
                .text(x, self.top_px + self.height + 16.0, "middle", "m", &label_of(v));
            v += step;
        }
    }

    pub fn finish(self) -> String {
        self.svg.finish()
    }
}

/// One row of a horizontal bar chart.
pub struct HBar {
    pub label: String,
    pub value: f64,
    pub class: &'static str,
    /// Shown right of the bar.
    pub text: String,
    /// On hover; none when empty (the text says it all).
    pub title: String,
    /// A tick across the bar (e.g. the row's fair share).
    pub mark: Option<f64>,
}

/// Horizontal bars, one row each, labels left, values right; the scale runs from 0 to the largest
/// value or mark.
pub fn hbars(name: &str, rows: &[HBar], mark_name: Option<&str>) -> String {
    let label_w = rows
        .iter()
        .map(|r| r.label.chars().count())
        .max()
        .unwrap_or(4)
        .clamp(4, 34) as f64
        * 6.6
        + 10.0;
    let text_w = rows
        .iter()
        .map(|r| r.text.chars().count())
        .max()
        .unwrap_or(4)
        .clamp(4, 40) as f64
        * 6.4
        + 8.0;
    let row_h = 20.0;
    let w = (label_w + 420.0 + text_w).max(520.0);
    let legend = if mark_name.is_some() { 18.0 } else { 0.0 };
    let h = rows.len() as f64 * row_h + 8.0 + legend;
    let mut svg = Svg::new(w, h, name);
    let max = rows
        .iter()
        .map(|r| r.value.max(r.mark.unwrap_or(0.0)))
        .fold(0.0, f64::max)
        .max(f64::MIN_POSITIVE);
    let bar_w = w - label_w - text_w;
    svg.s.push_str("<g text-anchor=\"end\">");
    for (i, r) in rows.iter().enumerate() {
        let y = 4.0 + i as f64 * row_h;
        let shown: String = if r.label.chars().count() > 34 {
            r.label.chars().take(33).chain(std::iter::once('…')).collect()
        } else {
            r.label.clone()
        };
        let _ = write!(
            svg.s,
            "<text x=\"{}\" y=\"{}\">{}</text>",
            N(label_w - 6.0),
            N(y + 14.0),
            Esc(&shown)
        );
    }
    svg.s.push_str("</g>");
    // Bars, then their values (one group), then the marks (one path).
    let (mut values, mut marks) = (String::from("<g class=\"m\">"), String::new());
    for (i, r) in rows.iter().enumerate() {
        let y = 4.0 + i as f64 * row_h;
        let len = r.value / max * bar_w;
        svg.rect(
            label_w,
            y + 3.0,
            len,
            row_h - 6.0,
            r.class,
            (!r.title.is_empty()).then_some(r.title.as_str()),
        );
        // Right of the bar, or of its mark when that lies further right.
        let end = len.max(r.mark.map_or(0.0, |m| m / max * bar_w));
        let _ = write!(
            values,
            "<text x=\"{}\" y=\"{}\">{}</text>",
            N(label_w + end + 4.0),
            N(y + 14.0),
            Esc(&r.text)
        );
        if let Some(m) = r.mark {
            let _ = write!(
                marks,
                "M{} {}v{}",
                N(label_w + m / max * bar_w),
                N(y + 1.0),
                N(row_h - 2.0)
            );
        }
    }
    values.push_str("</g>");
    svg.s.push_str(&values);
    if !marks.is_empty() {
        let _ = write!(svg.s, "<path class=\"fair\" d=\"{marks}\"/>");
    }
    if let Some(m) = mark_name {
        let y = h - 6.0;
        svg.line(label_w, y - 4.0, label_w + 18.0, y - 4.0, "fair");
        svg.text(label_w + 22.0, y, "start", "m", m);
    }
    svg.finish()
}

/// One cell of a heat map.
pub struct Cell {
    /// 0..=1: the colour's strength.
    pub heat: f64,
    /// One or two lines.
    pub lines: Vec<String>,
    pub title: String,
    /// Outlined (e.g. the same zone).
    pub outline: bool,
}

/// A heat map: rows × columns of cells, row labels left, column labels on top.
pub fn heatmap(name: &str, rows: &[String], cols: &[String], cells: &[Vec<Cell>], corner: &str) -> String {
    let label_w = rows
        .iter()
        .map(|r| r.chars().count())
        .chain(std::iter::once(corner.chars().count()))
        .max()
        .unwrap_or(4)
        .clamp(4, 30) as f64
        * 6.6
        + 12.0;
    let text_len = cells
        .iter()
        .flatten()
        .flat_map(|c| c.lines.iter().map(|l| l.chars().count()))
        .max()
        .unwrap_or(4);
    let cell_w = (text_len as f64 * 6.8 + 12.0).clamp(40.0, 130.0);
    let lines = cells.iter().flatten().map(|c| c.lines.len()).max().unwrap_or(1) as f64;
    let cell_h = 8.0 + 13.0 * lines;
    let col_label_len = cols.iter().map(|c| c.chars().count()).max().unwrap_or(1) as f64 * 6.6;
    let upright = col_label_len <= cell_w - 4.0;
    let head = if upright { 22.0 } else { col_label_len.min(150.0) + 10.0 };
    let w = label_w + cell_w * cols.len() as f64 + 8.0;
    let h = head + cell_h * rows.len() as f64 + 6.0;
    let mut svg = Svg::new(w.max(200.0), h, name);
    svg.text(label_w - 6.0, head - 8.0, "end", "m", corner);
    for (j, c) in cols.iter().enumerate() {
        let x = label_w + cell_w * (j as f64 + 0.5);
        if upright {
            svg.text(x, head - 8.0, "middle", "", c);
        } else {
            // Turned, reading upwards from just above the cells.
            let _ = write!(
                svg.s,
                "<text x=\"{x}\" y=\"{y}\" transform=\"rotate(-90 {x} {y})\" class=\"m\">{}</text>",
                Esc(c),
                x = N(x + 4.0),
                y = N(head - 6.0)
            );
        }
    }
    svg.s.push_str("<g text-anchor=\"end\">");
    for (i, r) in rows.iter().enumerate() {
        let y = head + cell_h * i as f64;
        let _ = write!(
            svg.s,
            "<text x=\"{}\" y=\"{}\">{}</text>",
            N(label_w - 6.0),
            N(y + cell_h / 2.0 + 4.0),
            Esc(r)
        );
    }
    svg.s.push_str("</g>");
    // The cells, then their texts (centred, in one group), then the outlines over them.
    let mut texts = String::from("<g text-anchor=\"middle\">");
    let mut outlines = String::new();
    for (i, row) in cells.iter().enumerate() {
        let y = head + cell_h * i as f64;
        for (j, c) in row.iter().enumerate() {
            let x = label_w + cell_w * j as f64;
            if c.lines.iter().all(String::is_empty) && !c.outline {
                // Nothing to say (e.g. no backend in this row of this run): left blank.
                continue;
            }
            let heat = c.heat.clamp(0.0, 1.0);
            // White to a deep blue; the text turns white on the dark half.
            let mix = |a: f64, b: f64| (a + (b - a) * heat).round() as u8;
            let _ = write!(
                svg.s,
                "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"#{:02x}{:02x}{:02x}\"><title>{}</title></rect>",
                N(x + 1.0),
                N(y + 1.0),
                N(cell_w - 2.0),
                N(cell_h - 2.0),
                mix(246.0, 8.0),
                mix(248.0, 69.0),
                mix(252.0, 148.0),
                Esc(&c.title)
            );
            let class = if heat > 0.55 { " class=\"on\"" } else { "" };
            for (k, l) in c.lines.iter().enumerate().filter(|(_, l)| !l.is_empty()) {
                let _ = write!(
                    texts,
                    "<text x=\"{}\" y=\"{}\"{class}>{}</text>",
                    N(x + cell_w / 2.0),
                    N(y + 16.0 + 13.0 * k as f64),
                    Esc(l)
                );
            }
            if c.outline {
                let _ = write!(
                    outlines,
                    "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" class=\"diag\"/>",
                    N(x + 1.5),
                    N(y + 1.5),
                    N(cell_w - 3.0),
                    N(cell_h - 3.0)
                );
            }
        }
    }
    texts.push_str("</g>");
    svg.s.push_str(&texts);
    svg.s.push_str(&outlines);
    svg.finish()
}

/// A legend row: coloured squares (CSS classes) or lines (colours) with their names.
pub fn legend(svg: &mut Svg, x: f64, y: f64, items: &[(&str, &str)]) {
    let mut x = x;
    for (swatch, name) in items {
        if swatch.starts_with('#') {
            let _ = write!(
                svg.s,
                "<line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"{swatch}\" class=\"line\"/>",
                N(x),
                N(y - 4.0),
                N(x + 14.0),
                N(y - 4.0)
            );
        } else {
            svg.rect(x, y - 9.0, 10.0, 10.0, swatch, None);
        }
        svg.text(x + 18.0, y, "start", "m", name);
        x += 26.0 + name.chars().count() as f64 * 6.2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coordinates_have_one_decimal_and_never_nan() {
        assert_eq!(N(1.0).to_string(), "1");
        assert_eq!(N(1.26).to_string(), "1.3");
        assert_eq!(N(-0.04).to_string(), "0");
        assert_eq!(N(f64::NAN).to_string(), "0");
        assert_eq!(N(f64::INFINITY).to_string(), "0");
    }

    #[test]
    fn nice_axes_round_up_in_1_2_5_steps() {
        assert_eq!(nice(137.0, 5), (150.0, 50.0));
        assert_eq!(nice(137.0, 8), (140.0, 20.0));
        assert_eq!(nice(1.0, 5), (1.0, 0.2));
        assert_eq!(nice(10_000.0, 5), (10_000.0, 2_000.0));
        assert_eq!(nice(0.0, 5), (1.0, 1.0));
    }

    #[test]
    fn negative_sizes_are_drawn_empty() {
        let mut s = Svg::new(10.0, 10.0, "t");
        s.rect(0.0, 0.0, -3.0, f64::NAN, "bar", Some("a<b"));
        let out = s.finish();
        assert!(out.contains("width=\"0\" height=\"0\""), "{out}");
        assert!(out.contains("<title>a&lt;b</title>"), "{out}");
    }
}
