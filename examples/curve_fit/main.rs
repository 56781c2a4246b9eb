//! A real curve fit: the Mauna Loa CO₂ record (weekly means, March 1958 – December 2001, 2225
//! weeks; data/co2, public domain) by a nonlinear trend and two seasonal harmonics,
//!
//! ```text
//! co2(t) = a + b·e^(c (t − 1980)) + s₁ sin 2πt + c₁ cos 2πt + s₂ sin 4πt + c₂ cos 4πt    (t in years)
//! ```
//!
//! with [`least_squares`] (Levenberg–Marquardt; the Jacobian by collapsed Taylor mode, one
//! forward pass), printing the parameters ± their standard errors (`σ²(JᵀJ)⁻¹`, as statistics
//! packages report them) and plotting data, fit and residuals (SVG). The reference fit, by SciPy
//! (tests/data/least_squares/co2_fit.json), agrees to 1e-8: `cargo test --example curve_fit`.
//!
//! `cargo run --release --example curve_fit [-- --plot target/co2-fit.svg]`
use std::f64::consts::PI;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Parser;
use plotters::prelude::*;
use tch::{Kind, Tensor};
use tch_jacobian::{least_squares, LeastSquaresOptions, LeastSquaresOutput};

#[derive(Parser, Debug)]
#[command(
    about = "Mauna Loa CO2: a nonlinear trend + seasonal fit with standard errors, and its plot"
)]
struct Args {
    /// The data (decimal_year and co2_ppm columns).
    #[arg(long, default_value = "data/co2/co2.csv")]
    data: PathBuf,
    /// Where to write the plot of data, fit and residuals (SVG).
    #[arg(long, default_value = "target/co2-fit.svg")]
    plot: PathBuf,
}

/// The parameters' names and the start (a rough guess: 250 ppm plus a 90 ppm exponential
/// growing 1.5 %/yr, no season).
const NAMES: [&str; 7] = ["a", "b", "c", "s1", "c1", "s2", "c2"];
const P0: [f64; 7] = [250.0, 90.0, 0.015, 0.0, 0.0, 0.0, 0.0];

/// `(decimal year, ppm)` from the CSV (`date,decimal_year,co2_ppm`).
fn read(path: &Path) -> Result<(Vec<f64>, Vec<f64>)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let (mut t, mut y) = (Vec::new(), Vec::new());
    for (i, line) in text.lines().enumerate().skip(1) {
        let cols: Vec<&str> = line.split(',').collect();
        if cols.len() != 3 {
            bail!(
                "{}:{}: expected 3 columns, got {line:?}",
                path.display(),
                i + 1
            );
        }
        t.push(cols[1].parse().with_context(|| format!("line {}", i + 1))?);
        y.push(cols[2].parse().with_context(|| format!("line {}", i + 1))?);
    }
    Ok((t, y))
}

/// The model at the parameters `p` (`[7]`) for the times `t` (`[m]`).
fn model(p: &Tensor, t: &Tensor) -> Tensor {
    let w = t * (2.0 * PI);
    p.get(0)
        + p.get(1) * ((t - 1980.0) * p.get(2)).exp()
        + p.get(3) * w.sin()
        + p.get(4) * w.cos()
        + p.get(5) * (&w * 2.0).sin()
        + p.get(6) * (&w * 2.0).cos()
}

/// Fits the model to `(t, y)`: one problem, `x [7] → r [m]`, with the covariance.
fn fit(t: &Tensor, y: &Tensor) -> tch_jacobian::Result<LeastSquaresOutput> {
    let residual = |p: &Tensor| model(p, t) - y;
    let opts = LeastSquaresOptions::default().covariance(true);
    least_squares(residual, &Tensor::from_slice(&P0), &opts)
}

fn plot(path: &Path, t: &[f64], y: &[f64], fitted: &[f64], resid: &[f64]) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let root = SVGBackend::new(path, (1100, 760)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(500);
    let (t0, t1) = (t[0].floor(), t[t.len() - 1].ceil());
    let (lo, hi) = y
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    let mut chart = ChartBuilder::on(&top)
        .caption(
            "Mauna Loa CO₂, weekly means, and the fit a + b·e^(c(t−1980)) + two harmonics",
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(35)
        .y_label_area_size(60)
        .build_cartesian_2d(t0..t1, (lo - 2.0)..(hi + 2.0))?;
    chart
        .configure_mesh()
        .y_desc("CO₂ (ppm)")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .draw()?;
    let data = RGBColor(120, 120, 120);
    chart
        .draw_series(LineSeries::new(
            t.iter().copied().zip(y.iter().copied()),
            data.stroke_width(1),
        ))?
        .label("data (weekly means)")
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], data.stroke_width(1)));
    let line = RGBColor(33, 102, 172);
    chart
        .draw_series(LineSeries::new(
            t.iter().copied().zip(fitted.iter().copied()),
            line.stroke_width(2),
        ))?
        .label("fit")
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], line.stroke_width(2)));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK.mix(0.4))
        .draw()?;
    let r = resid.iter().fold(0.0f64, |a, &v| a.max(v.abs())) * 1.1;
    let mut chart = ChartBuilder::on(&bottom)
        .caption("residuals: data − fit", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(35)
        .y_label_area_size(60)
        .build_cartesian_2d(t0..t1, -r..r)?;
    chart
        .configure_mesh()
        .x_desc("year")
        .y_desc("ppm")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .draw()?;
    chart.draw_series(LineSeries::new([(t0, 0.0), (t1, 0.0)], BLACK.mix(0.5)))?;
    chart.draw_series(LineSeries::new(
        t.iter().copied().zip(resid.iter().copied()),
        RGBColor(214, 96, 39).stroke_width(1),
    ))?;
    root.present()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn main() -> Result<()> {
    let args = Args::parse();
    let (tv, yv) = read(&args.data)?;
    let (t, y) = (Tensor::from_slice(&tv), Tensor::from_slice(&yv));
    let start = std::time::Instant::now();
    let out = fit(&t, &y)?;
    let ms = start.elapsed().as_secs_f64() * 1e3;
    println!(
        "Mauna Loa CO2, {} weekly means ({:.0}–{:.0}): co2(t) = a + b·e^(c (t − 1980)) + s1 sin 2πt + c1 cos 2πt + s2 sin 4πt + c2 cos 4πt",
        tv.len(),
        tv[0].floor(),
        tv[tv.len() - 1].floor()
    );
    println!(
        "{}: {} iterations, {} evaluations, {ms:.0} ms",
        out.status[0], out.iterations[0], out.evaluations[0]
    );
    let m = tv.len() as f64;
    let cost = out.cost.double_value(&[]);
    let sigma = (2.0 * cost / (m - 7.0)).sqrt();
    println!("cost ½Σr² = {cost:.4}, residual standard error σ = {sigma:.4} ppm (m − n = {} degrees of freedom)", tv.len() - 7);
    let x = Vec::<f64>::try_from(&out.x)?;
    let se = Vec::<f64>::try_from(out.standard_errors.as_ref().context("standard errors")?)?;
    for (k, name) in NAMES.iter().enumerate() {
        println!("  {name:>2} = {:>12.6} ± {:.6}", x[k], se[k]);
    }
    // What the parameters say: the growth rate today and the seasonal swing.
    let growth = x[1] * x[2] * (x[2] * 21.0).exp(); // d/dt at t = 2001
    let season = (
        (x[3] * x[3] + x[4] * x[4]).sqrt(),
        (x[5] * x[5] + x[6] * x[6]).sqrt(),
    );
    println!("growth in 2001: {growth:.2} ppm/year; seasonal amplitudes {:.2} ppm (annual), {:.2} ppm (semi-annual)", season.0, season.1);
    let fitted = Vec::<f64>::try_from(model(&out.x, &t).to_kind(Kind::Double))?;
    let resid: Vec<f64> = yv.iter().zip(&fitted).map(|(a, b)| a - b).collect();
    plot(&args.plot, &tv, &yv, &fitted, &resid)?;
    println!("plot: {}", args.plot.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fit, its standard errors and its covariance against SciPy's (least_squares lm,
    /// analytic Jacobian, ftol = xtol = gtol = 1e-15; tests/data/least_squares/co2_fit.json).
    #[test]
    fn matches_scipys_fit() {
        let root = env!("CARGO_MANIFEST_DIR");
        let (tv, yv) = read(&Path::new(root).join("data/co2/co2.csv")).unwrap();
        let json: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(Path::new(root).join("tests/data/least_squares/co2_fit.json"))
                .unwrap(),
        )
        .unwrap();
        let out = fit(&Tensor::from_slice(&tv), &Tensor::from_slice(&yv)).unwrap();
        assert!(out.success(), "{:?}", out.status);
        let close = |what: &str, a: &[f64], b: &serde_json::Value, rtol: f64| {
            let b: Vec<f64> = b
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|v| match v.as_array() {
                    Some(row) => row.iter().map(|x| x.as_f64().unwrap()).collect(),
                    None => vec![v.as_f64().unwrap()],
                })
                .collect();
            for (i, (x, y)) in a.iter().zip(&b).enumerate() {
                assert!(
                    (x - y).abs() <= rtol * y.abs(),
                    "{what}[{i}]: {x} vs SciPy {y}"
                );
            }
        };
        close(
            "params",
            &Vec::<f64>::try_from(&out.x).unwrap(),
            &json["params"],
            1e-8,
        );
        let cov = out.covariance.as_ref().unwrap().flatten(0, -1);
        close(
            "cov",
            &Vec::<f64>::try_from(&cov).unwrap(),
            &json["cov"],
            1e-6,
        );
        let cost = out.cost.double_value(&[]);
        assert!((cost - json["cost"].as_f64().unwrap()).abs() <= 1e-10 * cost);
    }
}
