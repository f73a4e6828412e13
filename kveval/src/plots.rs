//! SVG plots drawn with plotters: throughput and latency of the sweep, and the failover timeline.
//!
//! Colours: our system (`kv`) in blues, etcd in oranges, anything else in greens; within a system the
//! smallest cluster gets the darkest shade and a round marker, the next one a triangle.

use std::ops::Range;
use std::path::Path;

use anyhow::{Context, Result};
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint};
use plotters::coord::Shift;
use plotters::element::DashedPathElement;
use plotters::prelude::*;

use crate::failover::Failover;
use crate::sweep::{workload_title, Series, Sweep, WorkloadResults};

const FONT: &str = "sans-serif";
const TEXT: RGBColor = RGBColor(0x22, 0x22, 0x22);
const GRID: RGBColor = RGBColor(0xe4, 0xe4, 0xe4);
const KV_SHADES: [RGBColor; 3] = [
    RGBColor(0x1f, 0x4e, 0xa8),
    RGBColor(0x4f, 0x9b, 0xe8),
    RGBColor(0x0b, 0x2a, 0x5e),
];
const ETCD_SHADES: [RGBColor; 3] = [
    RGBColor(0xd9, 0x48, 0x0f),
    RGBColor(0xf5, 0x9f, 0x00),
    RGBColor(0x8a, 0x2c, 0x05),
];
const OTHER_SHADES: [RGBColor; 3] = [
    RGBColor(0x2b, 0x8a, 0x3e),
    RGBColor(0x69, 0xdb, 0x7c),
    RGBColor(0x5c, 0x5f, 0x66),
];
const KILL: RGBColor = RGBColor(0xc9, 0x2a, 0x2a);
const RESTART: RGBColor = RGBColor(0x2b, 0x8a, 0x3e);

/// Marker shapes that tell cluster sizes apart besides the shade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Marker {
    Circle,
    Triangle,
    Cross,
}

/// How one series is drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
struct SeriesStyle {
    color: RGBColor,
    marker: Marker,
}

/// Assigns a style to every series: the colour family comes from the system, the shade and marker from
/// the series' rank among that system's cluster sizes.
fn series_style(all: &[Series], series: &Series) -> SeriesStyle {
    let rank = all
        .iter()
        .filter(|s| s.system == series.system && s.nodes < series.nodes)
        .count();
    let shades = match series.system.as_str() {
        "kv" => &KV_SHADES,
        "etcd" => &ETCD_SHADES,
        _ => &OTHER_SHADES,
    };
    let marker = [Marker::Circle, Marker::Triangle, Marker::Cross][rank % 3];
    SeriesStyle {
        color: shades[rank % shades.len()],
        marker,
    }
}

/// A logarithmic axis with explicit tick positions (plotters' own log axis puts ticks only at powers
/// of the base, which leaves narrow ranges unlabelled).
#[derive(Debug, Clone)]
struct LogAxis {
    lo: f64,
    hi: f64,
    ticks: Vec<f64>,
}

impl LogAxis {
    /// A base-2 axis for client counts, ticked at exactly the counts present.
    fn clients(clients: &[u32]) -> Self {
        let min = clients.iter().copied().min().unwrap_or(1).max(1) as f64;
        let max = clients.iter().copied().max().unwrap_or(1).max(1) as f64;
        let pad = if max > min { 2f64.powf(0.3) } else { 2.0 };
        Self {
            lo: min / pad,
            hi: max * pad,
            ticks: clients.iter().map(|&c| c as f64).collect(),
        }
    }

    /// An axis covering `[min, max]` with some headroom, ticked at 1-2-5 steps (or every integer
    /// multiple of a power of ten when the range is narrow).
    fn values(min: f64, max: f64) -> Self {
        let min = if min > 0.0 { min } else { max.max(1e-3) / 100.0 };
        let max = max.max(min * 1.01);
        let (lo, hi) = (min / 1.4, max * 1.4);
        let ticks_with = |multipliers: &[f64]| -> Vec<f64> {
            let (e0, e1) = (lo.log10().floor() as i32, hi.log10().ceil() as i32);
            (e0..=e1)
                .flat_map(|e| multipliers.iter().map(move |m| m * 10f64.powi(e)))
                .filter(|v| (lo..=hi).contains(v))
                .collect()
        };
        let mut ticks = ticks_with(&[1.0, 2.0, 5.0]);
        if ticks.len() < 4 {
            ticks = ticks_with(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]);
        } else if ticks.len() > 12 {
            ticks = ticks_with(&[1.0]);
        }
        Self { lo, hi, ticks }
    }
}

impl Ranged for LogAxis {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        let f = (value.max(f64::MIN_POSITIVE).ln() - self.lo.ln()) / (self.hi.ln() - self.lo.ln());
        limit.0 + (f * f64::from(limit.1 - limit.0)).round() as i32
    }

    fn key_points<H: KeyPointHint>(&self, hint: H) -> Vec<f64> {
        // Only bold grid lines (which carry the labels); no light lines between them.
        if hint.weight().allow_light_points() {
            Vec::new()
        } else {
            self.ticks.clone()
        }
    }

    fn range(&self) -> Range<f64> {
        self.lo..self.hi
    }
}

/// Formats an axis value without useless decimals: `0.05`, `2`, `150`.
fn tick_label(v: f64) -> String {
    let decimals = if v > 0.0 {
        (-v.log10().floor()).max(0.0) as usize
    } else {
        0
    };
    format!("{v:.decimals$}")
}

/// Formats a throughput axis value: `800`, `2.5k`, `40k`.
fn ops_label(v: f64) -> String {
    if v.abs() >= 1000.0 {
        let k = v / 1000.0;
        if (k - k.round()).abs() < 1e-9 {
            format!("{}k", k.round())
        } else {
            format!("{k:.1}k")
        }
    } else {
        format!("{v:.0}")
    }
}

/// One entry of a hand-drawn legend.
struct LegendEntry {
    label: String,
    color: RGBColor,
    marker: Option<Marker>,
    dashed: bool,
}

fn draw_marker<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    at: (i32, i32),
    marker: Marker,
    color: RGBColor,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    match marker {
        Marker::Circle => area.draw(&Circle::new(at, 4, color.filled())),
        Marker::Triangle => area.draw(&TriangleMarker::new(at, 5, color.filled())),
        Marker::Cross => area.draw(&Cross::new(at, 4, color.stroke_width(2))),
    }
}

/// Draws a centred one-row legend: a line sample (with marker) and a label per entry.
fn draw_legend(area: &Area, entries: &[LegendEntry]) -> Result<()> {
    const SAMPLE: i32 = 34;
    const CHAR: i32 = 8;
    const GAP: i32 = 28;
    let widths: Vec<i32> = entries
        .iter()
        .map(|e| SAMPLE + 8 + e.label.len() as i32 * CHAR + 28)
        .collect();
    let (w, h) = area.dim_in_pixel();
    let total = widths.iter().sum::<i32>() - GAP;
    let mut x = (w as i32 - total).max(0) / 2;
    let y = h as i32 / 2;
    let font = (FONT, 15).into_font().color(&TEXT);
    for (entry, width) in entries.iter().zip(widths) {
        let style = entry.color.stroke_width(if entry.dashed { 2 } else { 3 });
        if entry.dashed {
            area.draw(&DashedPathElement::new(
                vec![(x, y), (x + SAMPLE, y)],
                6,
                4,
                style,
            ))?;
        } else {
            area.draw(&PathElement::new(vec![(x, y), (x + SAMPLE, y)], style))?;
        }
        if let Some(marker) = entry.marker {
            draw_marker(area, (x + SAMPLE / 2, y), marker, entry.color)?;
        }
        area.draw(&Text::new(
            entry.label.clone(),
            (x + SAMPLE + 8, y - 8),
            font.clone(),
        ))?;
        x += width;
    }
    Ok(())
}

/// The series legend shared by the sweep figures.
fn series_legend(all: &[Series]) -> Vec<LegendEntry> {
    all.iter()
        .map(|s| {
            let style = series_style(all, s);
            LegendEntry {
                label: s.label(),
                color: style.color,
                marker: Some(style.marker),
                dashed: false,
            }
        })
        .collect()
}

/// A pixel-addressed region of an SVG figure.
type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

/// Splits a figure into a title strip, a legend strip and `panels` side-by-side panels.
fn layout<'a>(root: &Area<'a>, title: &str, panels: usize) -> Result<(Area<'a>, Vec<Area<'a>>)> {
    root.fill(&WHITE)?;
    let (title_area, rest) = root.split_vertically(44);
    title_area.draw(&Text::new(
        title.to_string(),
        (title_area.dim_in_pixel().0 as i32 / 2, 12),
        (FONT, 22)
            .into_font()
            .color(&TEXT)
            .pos(plotters::style::text_anchor::Pos::new(
                plotters::style::text_anchor::HPos::Center,
                plotters::style::text_anchor::VPos::Top,
            )),
    ))?;
    let (legend_area, panel_area) = rest.split_vertically(34);
    Ok((legend_area, panel_area.split_evenly((1, panels.max(1)))))
}

/// Draws a series' markers in chart coordinates.
fn draw_points<X, Y>(
    chart: &mut ChartContext<'_, SVGBackend<'_>, Cartesian2d<X, Y>>,
    points: &[(f64, f64)],
    style: SeriesStyle,
) -> Result<()>
where
    X: Ranged<ValueType = f64>,
    Y: Ranged<ValueType = f64>,
{
    let color = style.color;
    match style.marker {
        Marker::Circle => {
            chart.draw_series(points.iter().map(|&p| Circle::new(p, 4, color.filled())))?;
        }
        Marker::Triangle => {
            chart.draw_series(points.iter().map(|&p| TriangleMarker::new(p, 5, color.filled())))?;
        }
        Marker::Cross => {
            chart.draw_series(points.iter().map(|&p| Cross::new(p, 4, color.stroke_width(2))))?;
        }
    }
    Ok(())
}

/// Throughput panel of one workload.
fn throughput_panel(area: &Area, w: &WorkloadResults, all: &[Series]) -> Result<()> {
    let max = w
        .series
        .iter()
        .flat_map(|s| &s.cells)
        .map(|c| c.throughput)
        .fold(0.0, f64::max);
    let mut chart = ChartBuilder::on(area)
        .caption(workload_title(&w.workload), (FONT, 18).into_font().color(&TEXT))
        .margin(12)
        .margin_right(24)
        .x_label_area_size(46)
        .y_label_area_size(64)
        .build_cartesian_2d(LogAxis::clients(&w.clients()), 0.0..(max * 1.12).max(1.0))?;
    chart
        .configure_mesh()
        .light_line_style(WHITE.mix(0.0))
        .bold_line_style(GRID)
        .x_desc("concurrent clients (log₂ scale)")
        .y_desc("throughput (ops/s)")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| ops_label(*v))
        .label_style((FONT, 13).into_font().color(&TEXT))
        .axis_desc_style((FONT, 14).into_font().color(&TEXT))
        .draw()?;
    for s in &w.series {
        let style = series_style(all, &s.series);
        let points: Vec<(f64, f64)> = s
            .cells
            .iter()
            .map(|c| (f64::from(c.clients), c.throughput))
            .collect();
        chart.draw_series(LineSeries::new(points.clone(), style.color.stroke_width(2)))?;
        draw_points(&mut chart, &points, style)?;
    }
    Ok(())
}

/// Latency panel of one workload: p99 solid, p50 dashed, log y axis.
fn latency_panel(area: &Area, w: &WorkloadResults, all: &[Series]) -> Result<()> {
    let values = w
        .series
        .iter()
        .flat_map(|s| &s.cells)
        .flat_map(|c| [c.latency_ms.p50, c.latency_ms.p99]);
    let (min, max) = values.fold((f64::INFINITY, 0.0f64), |(lo, hi), v| {
        (if v > 0.0 { lo.min(v) } else { lo }, hi.max(v))
    });
    let y = LogAxis::values(if min.is_finite() { min } else { 0.1 }, max.max(0.1));
    let mut chart = ChartBuilder::on(area)
        .caption(workload_title(&w.workload), (FONT, 18).into_font().color(&TEXT))
        .margin(12)
        .margin_right(24)
        .x_label_area_size(46)
        .y_label_area_size(64)
        .build_cartesian_2d(LogAxis::clients(&w.clients()), y)?;
    chart
        .configure_mesh()
        .light_line_style(WHITE.mix(0.0))
        .bold_line_style(GRID)
        .x_desc("concurrent clients (log₂ scale)")
        .y_desc("latency (ms, log scale)")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| tick_label(*v))
        .label_style((FONT, 13).into_font().color(&TEXT))
        .axis_desc_style((FONT, 14).into_font().color(&TEXT))
        .draw()?;
    for s in &w.series {
        let style = series_style(all, &s.series);
        let at = |f: fn(&crate::sweep::Latency) -> f64| -> Vec<(f64, f64)> {
            s.cells
                .iter()
                .map(|c| (f64::from(c.clients), f(&c.latency_ms)))
                .filter(|p| p.1 > 0.0)
                .collect()
        };
        let p50 = at(|l| l.p50);
        let p99 = at(|l| l.p99);
        chart.draw_series(DashedLineSeries::new(
            p50.clone(),
            6,
            4,
            style.color.stroke_width(2),
        ))?;
        chart.draw_series(LineSeries::new(p99.clone(), style.color.stroke_width(2)))?;
        draw_points(&mut chart, &p99, style)?;
        let hollow = SeriesStyle {
            marker: Marker::Cross,
            ..style
        };
        draw_points(
            &mut chart,
            &p50,
            if style.marker == Marker::Cross {
                style
            } else {
                hollow
            },
        )?;
    }
    Ok(())
}

/// Pixel size of a sweep figure with `panels` panels.
fn sweep_size(panels: usize) -> (u32, u32) {
    (480 * panels.max(1) as u32 + 40, 560)
}

/// Writes the throughput figure: one panel per workload, one line per series.
pub fn throughput_svg(sweep: &Sweep, path: &Path) -> Result<()> {
    let all = sweep.all_series();
    let root = SVGBackend::new(path, sweep_size(sweep.workloads.len())).into_drawing_area();
    let title = format!("Throughput vs. concurrent clients ({})", sweep.runs_caption());
    let (legend, panels) = layout(&root, &title, sweep.workloads.len())?;
    draw_legend(&legend, &series_legend(&all))?;
    for (w, panel) in sweep.workloads.iter().zip(&panels) {
        throughput_panel(panel, w, &all)?;
    }
    root.present()
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Writes the latency figure: one panel per workload; p99 solid with filled markers, p50 dashed with
/// crosses.
pub fn latency_svg(sweep: &Sweep, path: &Path) -> Result<()> {
    let all = sweep.all_series();
    let root = SVGBackend::new(path, sweep_size(sweep.workloads.len())).into_drawing_area();
    let title = format!(
        "Latency vs. concurrent clients: p99 solid, p50 dashed ({})",
        sweep.runs_caption()
    );
    let (legend, panels) = layout(&root, &title, sweep.workloads.len())?;
    let mut entries = series_legend(&all);
    entries.push(LegendEntry {
        label: "p99".into(),
        color: TEXT,
        marker: None,
        dashed: false,
    });
    entries.push(LegendEntry {
        label: "p50".into(),
        color: TEXT,
        marker: Some(Marker::Cross),
        dashed: true,
    });
    draw_legend(&legend, &entries)?;
    for (w, panel) in sweep.workloads.iter().zip(&panels) {
        latency_panel(panel, w, &all)?;
    }
    root.present()
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Writes the failover timeline of the median repetition. Does nothing (returns `Ok(false)`) when
/// there is no timeline to draw.
pub fn failover_svg(failover: &Failover, path: &Path) -> Result<bool> {
    let Some(t) = &failover.timeline else {
        return Ok(false);
    };
    let rep = failover.repetition(t.rep);
    let headline = match rep.and_then(|r| r.unavailable_ms) {
        Some(u) => format!("writes unavailable for {u:.1} ms"),
        None => rep
            .and_then(|r| r.note.clone())
            .unwrap_or_else(|| "unavailability unknown".into()),
    };
    let title = format!(
        "Leader failover, repetition {} of {} (the median one): {headline}",
        t.rep,
        failover.repetitions.len()
    );
    let root = SVGBackend::new(path, (1200, 560)).into_drawing_area();
    let (legend, panels) = layout(&root, &title, 1)?;
    let max_ok = t.ok_per_s.iter().map(|p| p.1).fold(0.0, f64::max);
    let max_bad = t.failed_unknown.iter().map(|p| p.1).max().unwrap_or(0);
    let y_top = (max_ok * 1.18).max(10.0);
    // Whole counts on the right axis: its top is an integer and there are at most that many + 1 labels.
    let bad_top = (max_bad as f64 * 1.25).ceil().max(2.0);
    let x_range = 0.0..t.end_s.max(0.1);

    let mut entries = vec![LegendEntry {
        label: "ok writes".into(),
        color: KV_SHADES[0],
        marker: None,
        dashed: false,
    }];
    if max_bad > 0 {
        let label = "failed/unknown (right axis)".into();
        entries.push(LegendEntry {
            label,
            color: KILL,
            marker: Some(Marker::Cross),
            dashed: false,
        });
    }
    draw_legend(&legend, &entries)?;

    let mut chart = ChartBuilder::on(&panels[0])
        .margin(12)
        .margin_right(if max_bad > 0 { 12 } else { 30 })
        .x_label_area_size(46)
        .y_label_area_size(70)
        .right_y_label_area_size(if max_bad > 0 { 60 } else { 0 })
        .build_cartesian_2d(x_range.clone(), 0.0..y_top)?
        .set_secondary_coord(x_range, 0.0..bad_top);
    chart
        .configure_mesh()
        .light_line_style(WHITE.mix(0.0))
        .bold_line_style(GRID)
        .x_desc("time since load start (s)")
        .y_desc("ok writes (ops/s, 100 ms buckets)")
        .x_label_formatter(&|v| tick_label_linear(*v))
        .y_label_formatter(&|v| ops_label(*v))
        .label_style((FONT, 13).into_font().color(&TEXT))
        .axis_desc_style((FONT, 14).into_font().color(&TEXT))
        .draw()?;
    if max_bad > 0 {
        chart
            .configure_secondary_axes()
            .y_desc("failed/unknown per 100 ms")
            .y_labels((bad_top as usize + 1).min(8))
            .y_label_formatter(&|v| {
                if v.fract() == 0.0 {
                    format!("{v:.0}")
                } else {
                    String::new()
                }
            })
            .label_style((FONT, 13).into_font().color(&KILL))
            .axis_desc_style((FONT, 14).into_font().color(&KILL))
            .draw()?;
    }

    // Event markers first, so that the data is drawn over them.
    let mut events = vec![(t.kill_s, "kill -9 leader", KILL)];
    if let Some(r) = t.restart_s {
        events.push((r, "restart", RESTART));
    }
    for (at, label, color) in events {
        let line = vec![(at, 0.0), (at, y_top)];
        chart.draw_series(DashedLineSeries::new(line, 8, 5, color.stroke_width(2)))?;
        let font = (FONT, 14).into_font().color(&color);
        chart.draw_series(std::iter::once(
            EmptyElement::at((at, y_top)) + Text::new(label, (6, 6), font),
        ))?;
    }

    let ok: Vec<(f64, f64)> = t.ok_per_s.iter().map(|&(s, v)| (s + 0.05, v)).collect();
    chart.draw_series(LineSeries::new(ok, KV_SHADES[0].stroke_width(2)))?;
    if max_bad > 0 {
        let bad = t
            .failed_unknown
            .iter()
            .filter(|p| p.1 > 0)
            .map(|&(s, n)| (s + 0.05, n as f64));
        chart.draw_secondary_series(bad.map(|p| Cross::new(p, 4, KILL.stroke_width(2))))?;
    }
    root.present()
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(true)
}

/// Formats a linear axis value with at most one decimal: `2`, `2.5`.
fn tick_label_linear(v: f64) -> String {
    if (v - v.round()).abs() < 1e-9 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn styles_separate_systems_and_sizes() {
        let all = [
            Series::new("kv", 3),
            Series::new("kv", 5),
            Series::new("etcd", 3),
            Series::new("etcd", 5),
        ];
        let kv3 = series_style(&all, &all[0]);
        let kv5 = series_style(&all, &all[1]);
        let etcd3 = series_style(&all, &all[2]);
        assert_eq!((kv3.color, kv3.marker), (KV_SHADES[0], Marker::Circle));
        assert_eq!((kv5.color, kv5.marker), (KV_SHADES[1], Marker::Triangle));
        assert_eq!((etcd3.color, etcd3.marker), (ETCD_SHADES[0], Marker::Circle));
    }

    #[test]
    fn client_axis_is_log2_and_ticked_at_client_counts() {
        let axis = LogAxis::clients(&[1, 4, 16, 64, 256]);
        assert_eq!(axis.key_points(BoldPointsHint(5)), [1.0, 4.0, 16.0, 64.0, 256.0]);
        let (a, b, c) = (
            axis.map(&1.0, (0, 800)),
            axis.map(&4.0, (0, 800)),
            axis.map(&16.0, (0, 800)),
        );
        assert!(
            (b - a - (c - b)).abs() <= 1,
            "equal spacing for equal ratios: {a} {b} {c}"
        );
    }

    #[test]
    fn value_axis_ticks() {
        let axis = LogAxis::values(0.4, 30.0);
        assert!(axis.ticks.contains(&1.0) && axis.ticks.contains(&20.0));
        assert!(axis.ticks.iter().all(|t| (axis.lo..=axis.hi).contains(t)));
        let narrow = LogAxis::values(3.0, 5.0);
        assert!(narrow.ticks.len() >= 4, "{:?}", narrow.ticks);
    }

    #[test]
    fn labels() {
        assert_eq!(tick_label(0.05), "0.05");
        assert_eq!(tick_label(20.0), "20");
        assert_eq!(ops_label(2500.0), "2.5k");
        assert_eq!(ops_label(40000.0), "40k");
        assert_eq!(ops_label(800.0), "800");
    }

    /// A bold-only key point hint, as plotters' mesh uses for labelled grid lines.
    struct BoldPointsHint(usize);

    impl KeyPointHint for BoldPointsHint {
        fn max_num_points(&self) -> usize {
            self.0
        }
        fn weight(&self) -> plotters::coord::ranged1d::KeyPointWeight {
            plotters::coord::ranged1d::KeyPointWeight::Bold
        }
    }
}
