//! The SVG plot of both spectra (plotters).
use super::*;

/// One panel: both spectra against `i`, log-scale y.
pub(crate) fn spectrum_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    caption: &str,
    y_desc: &str,
    ae: &[f64],
    cae: &[f64],
    intrinsic: Option<usize>,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let positive = ae
        .iter()
        .chain(cae)
        .copied()
        .filter(|v| v.is_finite() && *v > 0.0);
    let lo = positive.clone().fold(f64::INFINITY, f64::min) / 2.0;
    let hi = positive.fold(0.0, f64::max) * 2.0;
    if !(lo.is_finite() && hi > lo) {
        bail!("no positive singular values to plot");
    }
    let r = ae.len().max(cae.len());
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(65)
        .build_cartesian_2d(0.5f64..r as f64 + 0.5, (lo..hi).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("i (singular values in descending order)")
        .y_desc(y_desc)
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{v:.0e}"))
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 15))
        .draw()?;
    if let Some(d) = intrinsic {
        let x = d as f64 + 0.5;
        let grey = RGBColor(150, 150, 150);
        chart
            .draw_series(DashedLineSeries::new(
                [(x, lo), (x, hi)],
                6,
                4,
                grey.stroke_width(1),
            ))?
            .label(format!("manifold dimension ({d})"))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 22, y)], grey.stroke_width(1)));
    }
    let series = [
        ("plain auto-encoder", ae, RGBColor(214, 96, 39)),
        ("contractive auto-encoder", cae, RGBColor(33, 102, 172)),
    ];
    for (name, values, color) in series {
        let points = values
            .iter()
            .enumerate()
            .map(|(i, v)| ((i + 1) as f64, v.max(lo)));
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
            .label(name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 22, y)], color.stroke_width(2)));
        chart.draw_series(points.map(|p| Circle::new(p, 3, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerLeft)
        .label_font(("sans-serif", 14))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK.mix(0.4))
        .draw()?;
    Ok(())
}

/// Writes the SVG: the mean spectra (left) and the same divided by `σ_1` (right).
pub(crate) fn plot(
    path: &Path,
    caption: &str,
    ae: &[f64],
    cae: &[f64],
    intrinsic: Option<usize>,
) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("--plot: cannot create {}", dir.display()))?;
    }
    let normalized = |s: &[f64]| -> Vec<f64> {
        let first = s.first().copied().unwrap_or(1.0);
        s.iter().map(|v| v / first).collect()
    };
    let root = SVGBackend::new(path, (1200, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(caption, ("sans-serif", 22))?;
    let (left, right) = root.split_horizontally(600);
    spectrum_panel(
        &left,
        "mean singular values σ_i(J)",
        "σ_i (log scale)",
        ae,
        cae,
        intrinsic,
    )?;
    spectrum_panel(
        &right,
        "relative to the largest: σ_i / σ_1",
        "σ_i / σ_1 (log scale)",
        &normalized(ae),
        &normalized(cae),
        intrinsic,
    )?;
    root.present()
        .with_context(|| format!("--plot: cannot write {}", path.display()))?;
    Ok(())
}
