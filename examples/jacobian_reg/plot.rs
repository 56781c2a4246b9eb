//! The SVG plot (plotters): test accuracy against ε under FGSM and PGD, one line per estimator
//! (means over the seeds), one row of panels per model.
use super::*;

/// One estimator's curve: its name and `(ε, mean accuracy)` points.
pub(crate) type Curve = (&'static str, Vec<(f64, f64)>);

/// One model's curves: FGSM and PGD.
pub(crate) struct ModelCurves {
    pub(crate) model: &'static str,
    pub(crate) fgsm: Vec<Curve>,
    pub(crate) pgd: Vec<Curve>,
}

fn color(estimator: &str) -> RGBColor {
    match estimator {
        "none" => RGBColor(90, 90, 90),
        "exact" => RGBColor(33, 102, 172),
        "projections" => RGBColor(214, 96, 39),
        _ => RGBColor(27, 158, 119),
    }
}

fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    caption: &str,
    curves: &[Curve],
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let eps_max = curves
        .iter()
        .flat_map(|(_, c)| c.iter().map(|p| p.0))
        .fold(0.0f64, f64::max);
    let eps_max = if eps_max > 0.0 { eps_max } else { 1.0 };
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..eps_max * 1.02, 0.0..1.02f64)?;
    chart
        .configure_mesh()
        .x_desc("ε (L∞ budget, pixels in [0, 1])")
        .y_desc("test accuracy")
        .x_label_formatter(&|v| format!("{v:.2}"))
        .y_label_formatter(&|v| format!("{v:.1}"))
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 15))
        .draw()?;
    for (name, points) in curves {
        let c = color(name);
        let label = if *name == "none" {
            "none (cross-entropy only)".to_string()
        } else {
            format!("λ‖J‖²_F, {name}")
        };
        chart
            .draw_series(LineSeries::new(points.iter().copied(), c.stroke_width(2)))?
            .label(label)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 22, y)], c.stroke_width(2)));
        chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, c.filled())))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font(("sans-serif", 14))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK.mix(0.4))
        .draw()?;
    Ok(())
}

/// Writes the SVG: a row per model, FGSM left, PGD right.
pub(crate) fn plot(
    path: &Path,
    title: &str,
    models: &[ModelCurves],
    pgd_steps: usize,
) -> Result<()> {
    if models.is_empty() {
        bail!("--plot: nothing to plot");
    }
    let rows = models.len();
    let root = SVGBackend::new(path, (1200, 40 + 460 * rows as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 22))?;
    for (area, m) in root.split_evenly((rows, 1)).iter().zip(models) {
        let (left, right) = area.split_horizontally(600);
        panel(&left, &format!("{}: FGSM", m.model), &m.fgsm)?;
        panel(
            &right,
            &format!("{}: PGD ({pgd_steps} steps)", m.model),
            &m.pgd,
        )?;
    }
    root.present()
        .with_context(|| format!("--plot: cannot write {}", path.display()))?;
    Ok(())
}
