//! The Rust MGH problems (tests/lsq/mgh.rs) against the Python ones (tests/lsq/mgh.py): the same
//! table (names, sizes, starts, minima) and the same residuals, at x0, 10·x0, 100·x0 and x*, in
//! batches of two different rows (tests/data/least_squares/mgh_points.npz and mgh.json, written by
//! tests/gen-least-squares.py).

mod common;
#[path = "lsq/mgh.rs"]
mod mgh;

use std::collections::HashMap;
use tch::{Device, Kind, Tensor};

fn fixture_dir() -> String {
    format!("{}/tests/data/least_squares", common::root())
}

fn points() -> HashMap<String, Tensor> {
    let path = format!("{}/mgh_points.npz", fixture_dir());
    Tensor::read_npz(&path)
        .unwrap_or_else(|e| panic!("cannot read {path} ({e}); run tests/gen-least-squares.py"))
        .into_iter()
        .collect()
}

fn table() -> serde_json::Value {
    let path = format!("{}/mgh.json", fixture_dir());
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {path} ({e}); run tests/gen-least-squares.py"));
    serde_json::from_str(&text).expect("mgh.json")
}

fn vec_f64(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(
        t.to_device(Device::Cpu)
            .to_kind(Kind::Double)
            .flatten(0, -1),
    )
    .unwrap()
}

fn json_f64s(v: &serde_json::Value) -> Vec<f64> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number"))
        .collect()
}

/// `a` (ours) against `b` (Python's): the same non-finite class, else `|a - b| <= rtol |b| + atol`.
#[track_caller]
fn assert_close(what: &str, a: &[f64], b: &[f64], rtol: f64, atol: f64) {
    assert_eq!(a.len(), b.len(), "{what}: length");
    for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
        let ok = if x.is_finite() && y.is_finite() {
            (x - y).abs() <= rtol * y.abs() + atol
        } else {
            (x.is_nan() && y.is_nan()) || x == y
        };
        assert!(ok, "{what}[{i}]: rust {x:e}, python {y:e}");
    }
}

/// The table is the Python one: order, names, sizes, starts, minima, bit for bit.
#[test]
fn table_matches_python() {
    let json = table();
    let py = json["problems"].as_array().expect("problems");
    let rs = mgh::problems();
    let names: Vec<&str> = rs.iter().map(|p| p.name).collect();
    let py_names: Vec<&str> = py.iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, py_names);
    let pts = points();
    for (p, q) in rs.iter().zip(py) {
        let name = p.name;
        assert_eq!(p.mgh as u64, q["mgh"].as_u64().unwrap(), "{name}: mgh");
        assert_eq!(p.n, q["n"].as_i64().unwrap(), "{name}: n");
        assert_eq!(p.m, q["m"].as_i64().unwrap(), "{name}: m");
        assert_eq!(p.x0.len() as i64, p.n, "{name}: x0 length");
        assert_eq!(p.x0, json_f64s(&q["x0"]), "{name}: x0");
        assert_eq!(p.f_star, q["f_star"].as_f64().unwrap(), "{name}: f_star");
        assert_eq!(
            p.cost_star(),
            q["cost_star"].as_f64().unwrap(),
            "{name}: cost_star"
        );
        assert_eq!(
            p.f_published,
            q["f_published"].as_f64(),
            "{name}: f_published"
        );
        assert_eq!(
            p.x_star_exact,
            q["x_star_exact"].as_bool().unwrap(),
            "{name}: x_star_exact"
        );
        let xs = p.x_star.clone().expect("x_star");
        assert_eq!(xs, json_f64s(&q["x_star"]), "{name}: x_star");
        let other: Vec<f64> = q["other_minima"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["F"].as_f64().unwrap())
            .collect();
        assert_eq!(
            p.other_minima.iter().map(|o| o.0).collect::<Vec<_>>(),
            other,
            "{name}: other minima"
        );
        // the fixture's rows are start(1), start(10), start(100), x*
        let x = vec_f64(&pts[&format!("{name}_x")]);
        let n = p.n as usize;
        for (row, v) in [p.start(1.0), p.start(10.0), p.start(100.0), xs]
            .iter()
            .enumerate()
        {
            assert_eq!(
                &x[row * n..(row + 1) * n],
                &v[..],
                "{name}: fixture row {row}"
            );
        }
    }
}

/// r(x) in batches of two different rows: (x0, x*) and (10·x0, 100·x0), against Python's r at
/// rtol 1e-12, atol 1e-11. The ops are the same libtorch ops in the same order, but MKL's vector
/// math (exp, log) picks its kernels per CPU, and the fixture was written on an Intel CPU: on an
/// AMD EPYC, Meyer's r at x* (about 0.36, the difference of terms up to 3.5e4, where one ulp is
/// 7e-12) came out 4.5e-13 away.
fn residuals_match_python(device: Device) -> tch_jacobian::Result<()> {
    let pts = points();
    let atol = 1e-11;
    for p in mgh::problems() {
        let x = pts[&format!("{}_x", p.name)].to_device(device);
        let r = pts[&format!("{}_r", p.name)].to_device(device);
        for rows in [[0i64, 3], [1, 2]] {
            let idx = Tensor::from_slice(&rows).to_device(device);
            let xb = x.index_select(0, &idx);
            let out = (p.residual)(&xb);
            assert_eq!(out.size(), vec![2, p.m], "{}: shape", p.name);
            assert_eq!(out.kind(), Kind::Double, "{}: kind", p.name);
            assert_eq!(out.device(), device, "{}: device", p.name);
            let want = r.index_select(0, &idx);
            assert_close(
                &format!("{} rows {rows:?}", p.name),
                &vec_f64(&out),
                &vec_f64(&want),
                1e-12,
                atol,
            );
        }
    }
    Ok(())
}

/// Every row alone gives what it gives in a batch (no op mixes rows), and a float32 x gives a
/// float32 r close to the float64 one.
fn rows_independent_and_float32(device: Device) -> tch_jacobian::Result<()> {
    let pts = points();
    for p in mgh::problems() {
        let x = pts[&format!("{}_x", p.name)].to_device(device);
        let all = (p.residual)(&x);
        for i in 0..4 {
            let one = (p.residual)(&x.narrow(0, i, 1));
            let (a, b) = (vec_f64(&one), vec_f64(&all.narrow(0, i, 1)));
            if device.is_cuda() {
                assert_close(&format!("{} row {i} alone", p.name), &a, &b, 1e-12, 1e-12);
            } else {
                let same = a
                    .iter()
                    .zip(&b)
                    .all(|(u, v)| u.to_bits() == v.to_bits() || (u.is_nan() && v.is_nan()));
                assert!(same, "{} row {i}: alone differs from in the batch", p.name);
            }
        }
        // float32 at x0: same shape and kind, values within float32 rounding of the f64 ones
        let x32 = x.narrow(0, 0, 1).to_kind(Kind::Float);
        let r32 = (p.residual)(&x32);
        assert_eq!(
            r32.kind(),
            Kind::Float,
            "{}: float32 in, float32 out",
            p.name
        );
        assert_eq!(r32.size(), vec![1, p.m], "{}: float32 shape", p.name);
        let (a, b) = (vec_f64(&r32), vec_f64(&all.narrow(0, 0, 1)));
        let scale = b
            .iter()
            .filter(|v| v.is_finite())
            .fold(1.0f64, |s, v| s.max(v.abs()));
        for (j, (u, v)) in a.iter().zip(&b).enumerate() {
            if v.is_finite() && u.is_finite() {
                assert!(
                    (u - v).abs() <= 1e-4 * scale,
                    "{} f32 r[{j}]: {u} vs {v}",
                    p.name
                );
            }
        }
    }
    Ok(())
}

/// F at x* is the stated minimum (F* > 0: to 1e-9 relative; F* = 0: below 1e-28), and the published
/// value is F* truncated to MGH's 6 significant digits (or the closed form).
#[test]
fn minima_are_the_published_ones() {
    for p in mgh::problems() {
        let x = Tensor::from_slice(p.x_star.as_ref().unwrap()).view([1, p.n]);
        let r = (p.residual)(&x);
        let f = f64::try_from(r.square().sum(Kind::Double)).unwrap();
        if p.f_star > 0.0 {
            assert!(
                (f - p.f_star).abs() <= 1e-9 * p.f_star,
                "{}: F(x*) = {f:e}, F* = {:e}",
                p.name,
                p.f_star
            );
        } else {
            assert!(f <= 1e-28, "{}: F(x*) = {f:e}", p.name);
        }
        if let (Some(fp), true) = (p.f_published, p.f_star > 0.0) {
            let unit = 10f64.powf(fp.log10().floor() - 5.0);
            let six = format!("{fp:.5e}").parse::<f64>().unwrap() == fp;
            if six {
                assert!(
                    fp <= p.f_star * (1.0 + 1e-15) && p.f_star < fp + unit,
                    "{}: {fp} vs {}",
                    p.name,
                    p.f_star
                );
            } else {
                assert!((p.f_star - fp).abs() <= 1e-15 * fp, "{}", p.name);
            }
        }
    }
}

device_tests!(residuals_match_python, rows_independent_and_float32);
