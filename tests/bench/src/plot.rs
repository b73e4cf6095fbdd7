//! Line charts as SVG (plotters): one line per strategy over the run.

use std::path::Path;

use plotters::prelude::*;

/// One line: its name and its points (seconds, value).
pub(crate) type Line = (String, Vec<(f64, f64)>);

/// Distinct colours for up to a dozen lines, then around again.
const COLOURS: [RGBColor; 12] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
    RGBColor(0, 0, 0),
    RGBColor(255, 187, 120),
];

/// Draws `lines` into an SVG at `path`, with `title` and the y axis's
/// `unit`. Values spanning more than three decades are drawn on a log
/// scale (their log10 on the axis, labelled with the values).
pub(crate) fn chart(path: &Path, title: &str, unit: &str, lines: &[Line]) -> Result<(), String> {
    let points = lines.iter().flat_map(|(_, p)| p.iter());
    let x_max = points.clone().map(|p| p.0).fold(1.0, f64::max);
    let y_max = points.clone().map(|p| p.1).fold(0.0, f64::max).max(1.0) * 1.05;
    let y_min = points
        .map(|p| p.1)
        .filter(|v| *v > 0.0)
        .fold(f64::MAX, f64::min);
    let log = y_min < f64::MAX && y_max / y_min > 1000.0;
    let floor = (y_min / 2.0).max(1e-3);
    let scale = |v: f64| if log { v.max(floor).log10() } else { v };
    let (y_from, y_to) = (scale(if log { floor } else { 0.0 }), scale(y_max));
    let svg = SVGBackend::new(path, (900, 480)).into_drawing_area();
    let fail = |e: &dyn std::fmt::Display| format!("drawing {}: {e}", path.display());
    svg.fill(&WHITE).map_err(|e| fail(&e))?;
    let mut chart = ChartBuilder::on(&svg)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..x_max, y_from..y_to)
        .map_err(|e| fail(&e))?;
    let label = |v: &f64| {
        let value = if log { 10f64.powf(*v) } else { *v };
        format!("{value:.0}")
    };
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc(if log {
            format!("{unit} (log scale)")
        } else {
            unit.to_owned()
        })
        .y_label_formatter(&label)
        .draw()
        .map_err(|e| fail(&e))?;
    for (i, (name, pts)) in lines.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let pts = pts.iter().map(|&(x, y)| (x, scale(y)));
        chart
            .draw_series(LineSeries::new(pts, colour.stroke_width(2)))
            .map_err(|e| fail(&e))?
            .label(name.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| fail(&e))?;
    svg.present().map_err(|e| fail(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_is_an_svg_with_a_line_and_a_legend_entry_per_strategy() {
        let path =
            std::env::temp_dir().join(format!("sluicegate-chart-{}.svg", std::process::id()));
        let lines = vec![
            (
                "block".to_owned(),
                vec![(0.0, 1.0), (1.0, 5000.0), (2.0, 9000.0)],
            ),
            ("drop".to_owned(), vec![(0.0, 1.0), (1.0, 2.0), (2.0, 3.0)]),
        ];
        let drawn = chart(&path, "queue time p99", "ms", &lines);
        assert_eq!(drawn, Ok(()));
        let svg = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(80)]);
        let text = |t: &str| svg.contains(&format!("\n{t}\n</text>"));
        assert!(text("block") && text("drop"), "legend entries");
        assert!(svg.matches("<polyline").count() >= 2, "a line per strategy");
        let _ = std::fs::remove_file(path);
    }
}
