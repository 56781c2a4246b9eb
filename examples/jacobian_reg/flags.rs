//! clap value parsers shared by the examples' command lines (`jacobian_reg`, and `cae` through
//! `#[path]`): each error names what was wrong, and clap adds the flag.
#![allow(dead_code)] // each example uses some of them

use std::fmt::Display;
use std::str::FromStr;

use tch::Device;

/// A number, spaces around it allowed.
pub(crate) fn number<T: FromStr>(s: &str) -> Result<T, String>
where
    T::Err: Display,
{
    s.trim()
        .parse()
        .map_err(|e| format!("cannot read {s:?} as a number: {e}"))
}

/// A whole number ≥ 1.
pub(crate) fn at_least_one<T: FromStr + PartialOrd + From<u8>>(s: &str) -> Result<T, String>
where
    T::Err: Display,
{
    let v: T = number(s)?;
    if v < T::from(1) {
        return Err(format!("needs at least 1, got {}", s.trim()));
    }
    Ok(v)
}

/// A finite number ≥ 0.
pub(crate) fn non_negative(s: &str) -> Result<f64, String> {
    let v: f64 = number(s)?;
    if !(v.is_finite() && v >= 0.0) {
        return Err(format!("needs a finite value ≥ 0, got {}", s.trim()));
    }
    Ok(v)
}

/// A finite number > 0.
pub(crate) fn positive(s: &str) -> Result<f64, String> {
    let v: f64 = number(s)?;
    if !(v.is_finite() && v > 0.0) {
        return Err(format!("needs a finite value > 0, got {}", s.trim()));
    }
    Ok(v)
}

/// `cpu`, `cuda`, `cuda:N` or `auto` ([`tch_jacobian::device::parse_device`]).
pub(crate) fn device(s: &str) -> Result<Device, String> {
    tch_jacobian::device::parse_device(s).map_err(|e| e.to_string())
}
