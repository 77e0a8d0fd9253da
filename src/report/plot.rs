//! The report's plots, drawn with plotters' SVG backend. Text is laid out with plotters' own
//! estimate of its width and rendered by whatever shows the SVG, so no font files or system font
//! libraries are needed.
//!
//! Every model keeps one look across all plots ([`Look`]: a colour from a palette that stays
//! apart for colour-blind readers, and a marker shape, so that the plots read in greyscale too);
//! legends sit beside the plot, so labels never cover points or each other; log axes carry
//! labelled decades, and rounds and epochs integer ticks.

use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint};
use plotters::prelude::*;

/// Okabe and Ito's colour-blind-safe palette (without its yellow, too pale on white), then
/// darker tones.
const PALETTE: [(u8, u8, u8); 10] = [
    (0, 114, 178),
    (213, 94, 0),
    (0, 158, 115),
    (204, 121, 167),
    (86, 180, 233),
    (230, 159, 0),
    (0, 0, 0),
    (120, 94, 240),
    (128, 64, 0),
    (100, 100, 100),
];

/// Marker shapes, cycled at another period than the colours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marker {
    /// A filled circle.
    Circle,
    /// A filled triangle.
    Triangle,
    /// A filled square.
    Square,
    /// A cross.
    Cross,
    /// An open circle.
    Ring,
    /// An open square.
    Box,
}

const MARKERS: [Marker; 6] = [
    Marker::Circle,
    Marker::Triangle,
    Marker::Square,
    Marker::Cross,
    Marker::Ring,
    Marker::Box,
];

/// How one model is drawn, the same in every plot.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Look {
    /// Its colour.
    pub colour: RGBColor,
    /// Its marker.
    pub marker: Marker,
}

/// The look of the `i`-th model of a run (its place in `metrics.json`).
pub fn look(i: usize) -> Look {
    let (r, g, b) = PALETTE[i % PALETTE.len()];
    Look {
        colour: RGBColor(r, g, b),
        marker: MARKERS[(i + i / PALETTE.len()) % MARKERS.len()],
    }
}

/// One model's point on a trade-off plot.
#[derive(Debug, Clone)]
pub struct Point {
    /// Legend label.
    pub name: String,
    /// Its look.
    pub look: Look,
    /// x (size in bytes, or latency in µs).
    pub x: f64,
    /// y (accuracy in %, or MSE).
    pub y: f64,
}

/// One line of a curve plot.
#[derive(Debug, Clone)]
pub struct Line {
    /// Legend label.
    pub name: String,
    /// Its look.
    pub look: Look,
    /// Points (x, y).
    pub points: Vec<(f64, f64)>,
    /// Dashed (validation curves, targets).
    pub dashed: bool,
    /// Drawn thicker (an ensemble).
    pub bold: bool,
}

/// A horizontal or vertical reference line.
#[derive(Debug, Clone)]
pub enum Mark {
    /// y = value (a tolerance).
    Level {
        /// Legend label.
        name: String,
        /// The value.
        y: f64,
        /// Colour.
        look: Look,
    },
    /// x = value (the round kept).
    At {
        /// Legend label.
        name: String,
        /// The value.
        x: f64,
        /// Colour.
        look: Look,
    },
}

/// How an axis shows its values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scale {
    /// Linear, decimal ticks.
    Linear,
    /// Linear, whole-number ticks (epochs, rounds).
    Integer,
    /// Logarithmic, ticks at each power of ten.
    Log,
    /// Logarithmic with ticks in bytes (1 kB, 10 kB, …).
    LogBytes,
    /// Logarithmic with ticks in µs / ms.
    LogMicros,
}

const W: u32 = 860;
const H: u32 = 460;
const LEGEND_W: u32 = 250;
const LEGEND_ROW: i32 = 19;

type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;
type Chart<'a, 'b> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<Ticked, Ticked>>;
/// What draws into a chart: given the chart and the maps of x and y values to its coordinates
/// (log10 on log axes).
type Painter<'p> = dyn Fn(&mut Chart<'_, '_>, &dyn Fn(f64) -> f64, &dyn Fn(f64) -> f64) -> crate::error::Result<()>
    + 'p;

/// A linear axis (of values, or of log10 values for log axes) with the ticks we chose.
#[derive(Clone)]
pub struct Ticked {
    lo: f64,
    hi: f64,
    keys: Vec<f64>,
}

impl Ranged for Ticked {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;
    fn map(&self, v: &f64, limit: (i32, i32)) -> i32 {
        let f = (v - self.lo) / (self.hi - self.lo);
        limit.0 + (f * (limit.1 - limit.0) as f64).round() as i32
    }
    fn key_points<Hint: KeyPointHint>(&self, _hint: Hint) -> Vec<f64> {
        self.keys.clone()
    }
    fn range(&self) -> std::ops::Range<f64> {
        self.lo..self.hi
    }
}

fn err(e: impl std::fmt::Display) -> crate::error::Error {
    crate::error::Error::Other(format!("drawing a plot: {e}"))
}

/// A value in bytes, for axis ticks: decimal units, so that the decades read 1 kB, 10 kB, …
pub fn fmt_bytes(b: f64) -> String {
    let (v, u) = if b >= 1e9 {
        (b / 1e9, "GB")
    } else if b >= 1e6 {
        (b / 1e6, "MB")
    } else if b >= 1e3 {
        (b / 1e3, "kB")
    } else {
        (b, "B")
    };
    format!("{} {u}", trim(v))
}

/// A value in µs, for axis ticks.
pub fn fmt_micros(us: f64) -> String {
    if us >= 1e6 {
        format!("{} s", trim(us / 1e6))
    } else if us >= 1e3 {
        format!("{} ms", trim(us / 1e3))
    } else {
        format!("{} µs", trim(us))
    }
}

fn trim(v: f64) -> String {
    if (v - v.round()).abs() < 1e-9 {
        format!("{}", v.round() as i64)
    } else if v >= 10.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// A tick label on a linear or plain log axis.
fn fmt_plain(v: f64) -> String {
    let a = v.abs();
    if v == 0.0 {
        "0".into()
    } else if !(1e-3..1e5).contains(&a) {
        let e = a.log10().floor() as i32;
        let m = v / 10f64.powi(e);
        if (m - m.round()).abs() < 1e-9 && m.round() == 1.0 {
            format!("1e{e}")
        } else {
            format!("{m:.1}e{e}")
        }
    } else if (v - v.round()).abs() < 1e-9 {
        format!("{}", v.round() as i64)
    } else if a >= 1.0 {
        format!("{v:.2}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .into()
    } else {
        format!("{v:.4}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .into()
    }
}

fn fmt_tick(scale: Scale, v: f64) -> String {
    match scale {
        Scale::LogBytes => fmt_bytes(v),
        Scale::LogMicros => fmt_micros(v),
        Scale::Integer => format!("{}", v.round() as i64),
        _ => fmt_plain(v),
    }
}

/// The axis range (with a margin) and its key points.
fn axis(vals: &[f64], scale: Scale) -> (f64, f64, Vec<f64>) {
    let log = matches!(scale, Scale::Log | Scale::LogBytes | Scale::LogMicros);
    let good: Vec<f64> = vals
        .iter()
        .copied()
        .filter(|v| v.is_finite() && (!log || *v > 0.0))
        .collect();
    let (mut lo, mut hi) = good
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    if !lo.is_finite() {
        (lo, hi) = if log { (1.0, 10.0) } else { (0.0, 1.0) };
    }
    if log {
        let (a, b) = (lo.log10(), hi.log10());
        let pad = ((b - a) * 0.08).max(0.15);
        let (a, b) = (a - pad, b + pad);
        let decades: Vec<f64> = (a.ceil() as i32..=b.floor() as i32)
            .map(|e| 10f64.powi(e))
            .collect();
        // Fewer than two decades in view: add 2× and 5× ticks so the axis still reads.
        let keys = if decades.len() < 2 {
            let mut k = Vec::new();
            for e in (a.floor() as i32)..=(b.ceil() as i32) {
                for m in [1.0, 2.0, 5.0] {
                    let v = m * 10f64.powi(e);
                    if v >= 10f64.powf(a) && v <= 10f64.powf(b) {
                        k.push(v);
                    }
                }
            }
            k
        } else {
            decades
        };
        return (10f64.powf(a), 10f64.powf(b), keys);
    }
    if (hi - lo).abs() < 1e-12 {
        lo -= 0.5;
        hi += 0.5;
    }
    let pad = (hi - lo) * 0.06;
    let (lo, hi) = (lo - pad, hi + pad);
    let span = hi - lo;
    let step = if scale == Scale::Integer {
        let raw = (span / 8.0).max(1.0);
        let mag = 10f64.powf(raw.log10().floor());
        [1.0, 2.0, 5.0, 10.0]
            .iter()
            .map(|m| (m * mag).max(1.0))
            .find(|s| span / s <= 10.0)
            .unwrap_or(10.0 * mag)
            .round()
    } else {
        let mag = 10f64.powf((span / 6.0).log10().floor());
        [1.0, 2.0, 2.5, 5.0, 10.0]
            .iter()
            .map(|m| m * mag)
            .find(|s| span / s <= 7.0)
            .unwrap_or(10.0 * mag)
    };
    let mut keys = Vec::new();
    let mut t = (lo / step).ceil() * step;
    while t <= hi + 1e-12 && keys.len() < 30 {
        keys.push(if t.abs() < step * 1e-9 { 0.0 } else { t });
        t += step;
    }
    (lo, hi, keys)
}

/// Draws `look`'s marker at `p` (in `area`'s coordinates), `size` pixels across.
macro_rules! draw_marker {
    ($area:expr, $p:expr, $look:expr, $size:expr) => {{
        let c = $look.colour;
        let p = $p;
        let s: i32 = $size;
        match $look.marker {
            Marker::Circle => $area.draw(&Circle::new(p, s, c.filled())),
            Marker::Ring => $area.draw(&Circle::new(p, s, c.stroke_width(2))),
            Marker::Triangle => $area.draw(&TriangleMarker::new(p, s + 1, c.filled())),
            Marker::Square => {
                $area.draw(&(EmptyElement::at(p) + Rectangle::new([(-s, -s), (s, s)], c.filled())))
            }
            Marker::Box => $area.draw(
                &(EmptyElement::at(p) + Rectangle::new([(-s, -s), (s, s)], c.stroke_width(2))),
            ),
            Marker::Cross => $area.draw(&Cross::new(p, s + 1, c.stroke_width(3))),
        }
        .map_err(err)
    }};
}

/// Entries of a legend drawn beside the plot: (label, look, how: marker / line / dashed line).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Key {
    Marker,
    Line,
    Dashed,
    MarkerLine,
}

fn legend(area: &Area<'_>, entries: &[(String, Look, Key)]) -> crate::error::Result<()> {
    let font = ("sans-serif", 16).into_font();
    let row = LEGEND_ROW;
    let max_rows = ((area.dim_in_pixel().1 as i32 - 40) / row).max(1) as usize;
    for (i, (name, look, key)) in entries.iter().enumerate().take(max_rows) {
        let y = 30 + i as i32 * row;
        let c = look.colour;
        match key {
            Key::Line | Key::MarkerLine => {
                area.draw(&PathElement::new(vec![(8, y), (36, y)], c.stroke_width(2)))
                    .map_err(err)?;
            }
            Key::Dashed => {
                for s in [8, 20] {
                    area.draw(&PathElement::new(
                        vec![(s, y), (s + 8, y)],
                        c.stroke_width(2),
                    ))
                    .map_err(err)?;
                }
            }
            Key::Marker => {}
        }
        if matches!(key, Key::Marker | Key::MarkerLine) {
            draw_marker!(area, (22, y), look, 5)?;
        }
        let label = if name.chars().count() > 34 {
            format!("{}…", name.chars().take(33).collect::<String>())
        } else {
            name.clone()
        };
        area.draw(&Text::new(label, (44, y - 7), font.clone()))
            .map_err(err)?;
    }
    if entries.len() > max_rows {
        let y = 30 + max_rows as i32 * row;
        area.draw(&Text::new(
            format!("… and {} more", entries.len() - max_rows),
            (8, y - 7),
            font,
        ))
        .map_err(err)?;
    }
    Ok(())
}

/// What a chart needs to know of its axes.
pub struct Axes<'a> {
    /// Title above the plot.
    pub title: &'a str,
    /// x axis label, with its unit.
    pub x_label: &'a str,
    /// y axis label, with its unit.
    pub y_label: &'a str,
    /// x scale.
    pub x: Scale,
    /// y scale.
    pub y: Scale,
}

/// Draws one chart into `area` (which excludes the legend).
fn chart(
    area: &Area<'_>,
    axes: &Axes<'_>,
    xs: &[f64],
    ys: &[f64],
    draw: &Painter<'_>,
) -> crate::error::Result<()> {
    // Log axes are drawn on a linear chart of log10 values, with ticks at the decades: one
    // coordinate type for every chart, and the tick labels are ours.
    let logx = matches!(axes.x, Scale::Log | Scale::LogBytes | Scale::LogMicros);
    let logy = matches!(axes.y, Scale::Log | Scale::LogBytes | Scale::LogMicros);
    let (x0, x1, xk) = axis(xs, axes.x);
    let (y0, y1, yk) = axis(ys, axes.y);
    let tx = move |v: f64| if logx { v.max(1e-300).log10() } else { v };
    let ty = move |v: f64| if logy { v.max(1e-300).log10() } else { v };
    let xkeys: Vec<f64> = xk.iter().map(|&v| tx(v)).collect();
    let ykeys: Vec<f64> = yk.iter().map(|&v| ty(v)).collect();
    let xs_scale = axes.x;
    let ys_scale = axes.y;
    let mut c = ChartBuilder::on(area)
        .caption(axes.title, ("sans-serif", 21).into_font())
        .margin(12)
        .x_label_area_size(48)
        .y_label_area_size(72)
        .build_cartesian_2d(
            Ticked {
                lo: tx(x0),
                hi: tx(x1),
                keys: xkeys,
            },
            Ticked {
                lo: ty(y0),
                hi: ty(y1),
                keys: ykeys,
            },
        )
        .map_err(err)?;
    let fx = move |v: &f64| fmt_tick(xs_scale, if logx { 10f64.powf(*v) } else { *v });
    let fy = move |v: &f64| fmt_tick(ys_scale, if logy { 10f64.powf(*v) } else { *v });
    c.configure_mesh()
        .x_desc(axes.x_label)
        .y_desc(axes.y_label)
        .x_label_formatter(&fx)
        .y_label_formatter(&fy)
        .axis_desc_style(("sans-serif", 17))
        .label_style(("sans-serif", 15))
        .bold_line_style(RGBColor(225, 225, 225))
        .light_line_style(TRANSPARENT)
        .draw()
        .map_err(err)?;
    draw(&mut c, &tx, &ty)
}

/// An SVG of the plot (`W × H`) and its legend beside it; the picture grows taller when the
/// legend has more than `legend_rows` fit beside the plot, the plot keeping its size.
fn svg(
    legend_rows: usize,
    draw: impl FnOnce(&Area<'_>, &Area<'_>) -> crate::error::Result<()>,
) -> crate::error::Result<String> {
    let mut out = String::new();
    let height = H
        .max(40 + LEGEND_ROW as u32 * legend_rows as u32 + 10)
        .min(2000);
    {
        let root = SVGBackend::with_string(&mut out, (W, height)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let (left, side) = root.split_horizontally(W - LEGEND_W);
        let (plot, _) = left.split_vertically(H);
        draw(&plot, &side)?;
        root.present().map_err(err)?;
    }
    Ok(out)
}

/// Points no other point beats on both axes: smaller x and better y (`higher`: y is better
/// when higher). Sorted by x.
pub fn front(points: &[Point], higher: bool) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..points.len())
        .filter(|&i| points[i].x.is_finite() && points[i].y.is_finite() && points[i].x > 0.0)
        .collect();
    idx.sort_by(|&a, &b| {
        points[a].x.total_cmp(&points[b].x).then(if higher {
            points[b].y.total_cmp(&points[a].y)
        } else {
            points[a].y.total_cmp(&points[b].y)
        })
    });
    let mut best = if higher {
        f64::NEG_INFINITY
    } else {
        f64::INFINITY
    };
    let mut out = Vec::new();
    for i in idx {
        let y = points[i].y;
        if (higher && y > best) || (!higher && y < best) {
            best = y;
            out.push(i);
        }
    }
    out
}

/// A trade-off plot (score against size or latency): every model as its own marker, and the
/// front of models no other beats on both, joined by a dashed line and marked in the legend.
pub fn tradeoff(axes: &Axes<'_>, points: &[Point], higher: bool) -> crate::error::Result<String> {
    let on_front = front(points, higher);
    let xs: Vec<f64> = points.iter().map(|p| p.x).collect();
    let ys: Vec<f64> = points.iter().map(|p| p.y).collect();
    svg(points.len() + 1, |plot, side| {
        chart(plot, axes, &xs, &ys, &|c, tx, ty| {
            let line: Vec<(f64, f64)> = on_front
                .iter()
                .map(|&i| (tx(points[i].x), ty(points[i].y)))
                .collect();
            if line.len() > 1 {
                c.draw_series(DashedLineSeries::new(
                    line,
                    6,
                    4,
                    RGBColor(90, 90, 90).stroke_width(2),
                ))
                .map_err(err)?;
            }
            for p in points.iter().filter(|p| p.x > 0.0 && p.y.is_finite()) {
                draw_marker!(c.plotting_area(), (tx(p.x), ty(p.y)), p.look, 5)?;
            }
            Ok(())
        })?;
        let mut entries: Vec<(String, Look, Key)> = points
            .iter()
            .enumerate()
            .filter(|(_, p)| p.x > 0.0 && p.y.is_finite())
            .map(|(i, p)| {
                let star = if on_front.contains(&i) {
                    " ◆ front"
                } else {
                    ""
                };
                (format!("{}{star}", p.name), p.look, Key::Marker)
            })
            .collect();
        entries.push((
            "front (none smaller and better)".into(),
            Look {
                colour: RGBColor(90, 90, 90),
                marker: Marker::Circle,
            },
            Key::Dashed,
        ));
        legend(side, &entries)
    })
}

/// A plot of lines (training curves, rounds), with optional reference marks.
pub fn lines(axes: &Axes<'_>, series: &[Line], marks: &[Mark]) -> crate::error::Result<String> {
    let mut xs: Vec<f64> = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .collect();
    let mut ys: Vec<f64> = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .collect();
    for m in marks {
        match m {
            Mark::Level { y, .. } => ys.push(*y),
            Mark::At { x, .. } => xs.push(*x),
        }
    }
    let logy = matches!(axes.y, Scale::Log | Scale::LogBytes | Scale::LogMicros);
    svg(series.len() + marks.len(), |plot, side| {
        chart(plot, axes, &xs, &ys, &|c, tx, ty| {
            let (yr, xr) = (c.y_range(), c.x_range());
            for m in marks {
                let (pts, look) = match m {
                    Mark::Level { y, look, .. } => {
                        (vec![(xr.start, ty(*y)), (xr.end, ty(*y))], *look)
                    }
                    Mark::At { x, look, .. } => (vec![(tx(*x), yr.start), (tx(*x), yr.end)], *look),
                };
                c.draw_series(DashedLineSeries::new(
                    pts,
                    3,
                    5,
                    look.colour.stroke_width(2),
                ))
                .map_err(err)?;
            }
            for s in series {
                let pts: Vec<(f64, f64)> = s
                    .points
                    .iter()
                    .filter(|p| p.1.is_finite() && (!logy || p.1 > 0.0))
                    .map(|&(x, y)| (tx(x), ty(y)))
                    .collect();
                let w = if s.bold { 3 } else { 2 };
                let style: ShapeStyle = s.look.colour.stroke_width(w);
                if s.dashed {
                    c.draw_series(DashedLineSeries::new(pts.clone(), 7, 4, style))
                        .map_err(err)?;
                } else {
                    c.draw_series(LineSeries::new(pts.clone(), style))
                        .map_err(err)?;
                }
                // Markers on the points (few of them): the line's identity in greyscale.
                if pts.len() <= 40 {
                    for &p in &pts {
                        draw_marker!(c.plotting_area(), p, s.look, if s.bold { 5 } else { 3 })?;
                    }
                }
            }
            Ok(())
        })?;
        let mut entries: Vec<(String, Look, Key)> = series
            .iter()
            .map(|s| {
                (
                    s.name.clone(),
                    s.look,
                    if s.dashed {
                        Key::Dashed
                    } else {
                        Key::MarkerLine
                    },
                )
            })
            .collect();
        for m in marks {
            let (name, look) = match m {
                Mark::Level { name, look, .. } | Mark::At { name, look, .. } => (name, look),
            };
            entries.push((name.clone(), *look, Key::Dashed));
        }
        legend(side, &entries)
    })
}

/// Before and after: for each model, a hollow marker at its score before recovery, a filled
/// one after, joined by a line (compression stages).
pub fn before_after(
    axes: &Axes<'_>,
    rows: &[(String, Look, f64, f64)],
) -> crate::error::Result<String> {
    let xs: Vec<f64> = rows.iter().flat_map(|r| [r.2, r.3]).collect();
    let ys: Vec<f64> = (0..rows.len()).map(|i| i as f64).collect();
    let axes = Axes {
        y: Scale::Integer,
        ..*axes
    };
    let names: Vec<String> = rows.iter().map(|r| r.0.clone()).collect();
    svg(rows.len() + 2, |plot, side| {
        chart(plot, &axes, &xs, &ys, &|c, tx, _| {
            for (i, (_, look, b, a)) in rows.iter().enumerate() {
                let y = i as f64;
                c.draw_series(LineSeries::new(
                    vec![(tx(*b), y), (tx(*a), y)],
                    look.colour.stroke_width(2),
                ))
                .map_err(err)?;
                c.plotting_area()
                    .draw(&Circle::new((tx(*b), y), 5, look.colour.stroke_width(2)))
                    .map_err(err)?;
                c.plotting_area()
                    .draw(&Circle::new((tx(*a), y), 5, look.colour.filled()))
                    .map_err(err)?;
            }
            Ok(())
        })?;
        let mut entries: Vec<(String, Look, Key)> = names
            .iter()
            .enumerate()
            .map(|(i, n)| (format!("{i}: {n}"), rows[i].1, Key::Line))
            .collect();
        let grey = Look {
            colour: RGBColor(60, 60, 60),
            marker: Marker::Ring,
        };
        entries.push(("before recovery (open)".into(), grey, Key::Marker));
        entries.push((
            "after recovery (filled)".into(),
            Look {
                marker: Marker::Circle,
                ..grey
            },
            Key::Marker,
        ));
        legend(side, &entries)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pt(name: &str, x: f64, y: f64) -> Point {
        Point {
            name: name.into(),
            look: look(0),
            x,
            y,
        }
    }

    #[test]
    fn the_front_keeps_models_no_other_beats_on_both() {
        let p = [
            pt("big", 1000.0, 98.0),
            pt("small", 10.0, 90.0),
            pt("worse", 500.0, 89.0),
            pt("mid", 100.0, 95.0),
            pt("tie-bigger", 200.0, 95.0),
        ];
        assert_eq!(front(&p, true), vec![1, 3, 0]);
        // Lower is better (MSE).
        let q = [pt("a", 10.0, 5.0), pt("b", 100.0, 3.0), pt("c", 50.0, 6.0)];
        assert_eq!(front(&q, false), vec![0, 1]);
    }

    #[test]
    fn log_axes_tick_at_decades_and_integer_axes_at_whole_numbers() {
        let (_, _, k) = axis(&[1e-4, 3e-2], Scale::Log);
        assert!(
            k.iter()
                .all(|v| (v.log10() - v.log10().round()).abs() < 1e-9),
            "{k:?}"
        );
        assert!(k.len() >= 2);
        let (_, _, k) = axis(&[0.0, 7.0], Scale::Integer);
        assert!(k.iter().all(|v| v.fract() == 0.0), "{k:?}");
        assert_eq!(fmt_tick(Scale::LogBytes, 1e4), "10 kB");
        assert_eq!(fmt_tick(Scale::LogMicros, 2500.0), "2.5 ms");
        assert_eq!(fmt_tick(Scale::Log, 1e-4), "1e-4");
    }

    #[test]
    fn every_model_keeps_one_look_and_neighbours_differ() {
        for i in 0..30 {
            assert_eq!(look(i), look(i));
            assert_ne!(look(i), look(i + 1));
        }
        // Models ten apart share a colour but not a marker (greyscale tells them apart).
        assert_ne!(look(0).marker, look(10).marker);
    }

    #[test]
    fn a_plot_is_an_svg_with_its_labels() {
        let s = tradeoff(
            &Axes {
                title: "Test accuracy vs size",
                x_label: "weights (bytes, log scale)",
                y_label: "test accuracy (%)",
                x: Scale::LogBytes,
                y: Scale::Linear,
            },
            &[pt("teacher", 2e6, 98.0), pt("student", 1e4, 96.0)],
            true,
        )
        .unwrap();
        assert!(s.starts_with("<svg") && s.trim_end().ends_with("</svg>"));
        for t in [
            "teacher ◆ front",
            "student ◆ front",
            "test accuracy (%)",
            "10 kB",
            "1 MB",
        ] {
            assert!(s.contains(t), "{t} missing");
        }
    }
}
