//! The residual closure and where its Jacobian comes from: the one policy of the solver that
//! touches the crate's derivative engines (none of its own).
//!
//! * **Taylor** — collapsed Taylor mode ([`crate::native::taylor::collapsed`]) along the `n`
//!   identity directions, broadcast over the batch: one forward pass gives `r(x)` and every
//!   column `J e_j` (its first-order coefficients), each op of the closure run once. `Auto`'s
//!   choice for `m ≥ n` (forward mode's shape: `Auto` starts with it, and a residual found wide,
//!   `m < n`, on the first pass goes to the crate's `Auto` for the rest of the solve); when the
//!   closure uses an op without a collapsed rule or one the mode refuses, the crate's batched
//!   Jacobian instead, for the rest of the solve. An explicit `Strategy::Taylor` never falls back.
//! * **Crate** — [`per_sample_jacobian_of_aux`](crate::per_sample_jacobian_of_aux) with the asked
//!   [`Strategy`] (`Auto` for wide problems, `m < n`: the batched backward pass).
//! * **User** — the caller's Jacobian closure.
//!
//! The second directional derivative `r″(x)[w, w]` of geodesic acceleration is one more
//! collapsed pass along `w` (`D = 1`: its summed second-order coefficient), or, for closures it
//! cannot follow, two nested JVPs (double backward).

use std::cell::Cell;

use tch::{Device, Kind, Tensor};

use super::options::JacobianFn;
use crate::error::{Error, Result};
use crate::strategy::{JacobianOptions, Strategy};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Taylor,
    Crate(Strategy),
    User,
}

/// The batched residual `x [B, n] → r [B, m]` of a solve, with its Jacobian.
pub(crate) struct Residual<'a> {
    call: &'a dyn Fn(&Tensor) -> Result<Tensor>,
    jac: Option<JacobianFn<'a>>,
    pub b: i64,
    pub n: i64,
    /// Residuals per problem (known after the first evaluation).
    pub m: Cell<i64>,
    kind: Kind,
    device: Device,
    route: Cell<Route>,
    taylor_second: Cell<bool>,
    /// `Auto`: a residual collapsed Taylor mode cannot follow goes to the crate's Jacobians
    /// (an explicit `Strategy::Taylor` returns the error).
    taylor_fallback: bool,
    /// The independence check is still to run (on the first Jacobian).
    check: Cell<bool>,
}

/// The first problem and entry where `r` (`[B, m]`) is not finite: an error naming it.
pub(crate) fn check_finite_start(r: &Tensor) -> Result<()> {
    let bad = r.f_isfinite()?.f_logical_not()?;
    if !bool::try_from(bad.f_any()?)? {
        return Ok(());
    }
    let idx = bad.f_nonzero()?;
    let (i, j) = (idx.f_int64_value(&[0, 0])?, idx.f_int64_value(&[0, 1])?);
    Err(Error::InvalidArgument(format!(
        "the residual at x0 is not finite: problem {i}, residual {j} is {} (r has shape {:?}); start from a point where every residual is finite",
        r.f_double_value(&[i, j])?,
        r.size()
    )))
}

impl<'a> Residual<'a> {
    /// `call` maps `[B, n]` to `[B, m]`; `jac` (the user's) `[B, n]` to `[B, m, n]`.
    pub(crate) fn new(
        call: &'a dyn Fn(&Tensor) -> Result<Tensor>,
        jac: Option<JacobianFn<'a>>,
        x0: &Tensor,
        strategy: Strategy,
        check_independence: bool,
    ) -> Result<Self> {
        let s = x0.size();
        let route = match (jac, strategy) {
            (Some(_), _) => Route::User,
            (None, Strategy::Auto | Strategy::Taylor) => Route::Taylor,
            (None, s) => Route::Crate(s.validate()?),
        };
        Ok(Residual {
            call,
            jac,
            b: s[0],
            n: s[1],
            m: Cell::new(-1),
            kind: x0.kind(),
            device: x0.device(),
            route: Cell::new(route),
            taylor_second: Cell::new(
                jac.is_none() || matches!(strategy, Strategy::Auto | Strategy::Taylor),
            ),
            taylor_fallback: strategy == Strategy::Auto,
            check: Cell::new(check_independence && s[0] >= 2),
        })
    }

    /// Checks a residual: `[B, m]` (the same `m` every call), the solver's dtype and device.
    fn checked(&self, r: Tensor, what: &str) -> Result<Tensor> {
        let s = r.size();
        if r.device() != self.device {
            return Err(Error::Device(format!(
                "the residual ({what}, shape {s:?}) is on {:?} but x is on {:?}; return it on x's device",
                r.device(),
                self.device
            )));
        }
        if s.len() != 2 || s[0] != self.b {
            return Err(Error::Shape(format!(
                "the residual of x [B, n] = [{}, {}] must have shape [B, m] = [{}, m]; got {s:?} ({what})",
                self.b, self.n, self.b
            )));
        }
        let m = self.m.get();
        if m >= 0 && s[1] != m {
            return Err(Error::Shape(format!(
                "the residual changed its length: {m} residuals per problem at x0, {} now ({what})",
                s[1]
            )));
        }
        if m < 0 {
            self.m.set(s[1]);
        }
        if r.kind() != self.kind {
            return Err(Error::Kind(format!(
                "the residual has dtype {:?} but x0 has {:?} (shape {s:?}, {what}); return it in x's dtype",
                r.kind(),
                self.kind
            )));
        }
        Ok(r.f_detach()?)
    }

    /// `r(x)`, `[B, m]`, with its graph (grad mode on; for products through it).
    pub(crate) fn with_graph(&self, x: &Tensor) -> Result<Tensor> {
        let r = crate::autograd::grad_mode_on(|| (self.call)(x))?;
        let _ = self.checked(r.shallow_clone(), "r(x)")?;
        Ok(r)
    }

    /// `r(x)`, `[B, m]`, without a graph.
    pub(crate) fn value(&self, x: &Tensor) -> Result<Tensor> {
        let r = tch::no_grad(|| (self.call)(x))?;
        self.checked(r, "r(x)")
    }

    /// `r(x)` and `J` as `[B, m, n]` (possibly a strided view), and whether that tensor is the
    /// solver's own (computed here, so that rows may be written in place), not the user's.
    pub(crate) fn value_and_jacobian(&self, x: &Tensor) -> Result<(Tensor, Tensor, bool)> {
        loop {
            match self.route.get() {
                Route::Taylor => match self.taylor(x) {
                    Ok(v) => {
                        if self.taylor_fallback && self.m.get() < self.n {
                            // a wide residual (known after the first pass): n directions cost
                            // more than the m backward rows of the crate's Auto
                            self.route.set(Route::Crate(Strategy::Auto));
                        }
                        return Ok(v);
                    }
                    Err(e @ (Error::NoTaylorRule { .. } | Error::TaylorUnsupported { .. }))
                        if self.taylor_fallback =>
                    {
                        log::debug!(
                            "least_squares: collapsed Taylor mode cannot follow the residual ({e}); using the crate's batched Jacobian"
                        );
                        self.route.set(Route::Crate(Strategy::Auto));
                    }
                    Err(e) => return Err(e),
                },
                Route::Crate(s) => return self.crate_jacobian(x, s),
                Route::User => return self.user(x),
            }
        }
    }

    fn taylor(&self, x: &Tensor) -> Result<(Tensor, Tensor, bool)> {
        let (b, n) = (self.b, self.n);
        let dirs = Tensor::f_eye(n, (self.kind, self.device))?
            .f_reshape([n, 1, n])?
            .f_expand([n, b, n], false)?;
        let xd = x.f_detach()?;
        let t = crate::autograd::grad_mode_on(|| {
            crate::native::taylor::collapsed(self.call, &xd, &dirs, false)
        })?;
        let r = self.checked(t.value, "r(x) in collapsed Taylor mode")?;
        if self.check.get() {
            check_finite_start(&r)?;
        }
        let m = r.size()[1];
        // [n, B, m] → Jᵀ [B, n, m]; an output that ignores x gets zeros.
        // (a view: the solver only multiplies it, and a copy costs as much as the product)
        let first = t.first.f_detach()?;
        let owned = first.size() == [n, b, m] && first.is_contiguous();
        let jm = first
            .f_expand([n, b, m], false)?
            .f_permute([1i64, 2, 0].as_slice())?;
        if self.check.replace(false) {
            self.taylor_independence(&xd, &jm)?;
        }
        Ok((r, jm, owned))
    }

    /// One more collapsed pass along a random direction `c_b` per problem: its first-order
    /// coefficient must be `J_b c_b` (from the identity directions, broadcast over the batch)
    /// when the problems do not interact.
    fn taylor_independence(&self, x: &Tensor, jm: &Tensor) -> Result<()> {
        let c = crate::independence::probe_like(x, 7)?; // [B, n]
        let probe = crate::autograd::grad_mode_on(|| {
            crate::native::taylor::collapsed(self.call, x, &c.f_unsqueeze(0)?, false)
        })?;
        let actual = probe.first.f_detach()?.f_reshape([self.b, -1])?;
        let predicted = jm.f_matmul(&c.f_unsqueeze(2)?)?.f_squeeze_dim(2)?;
        let scale = jm
            .f_abs()?
            .f_matmul(&c.f_abs()?.f_unsqueeze(2)?)?
            .f_squeeze_dim(2)?;
        let reference = crate::independence::magnitude(&probe.value)?;
        crate::independence::compare("least_squares", &actual, &predicted, &scale, reference)
    }

    fn crate_jacobian(&self, x: &Tensor, s: Strategy) -> Result<(Tensor, Tensor, bool)> {
        if self.check.get() {
            // before the crate's own independence check, which NaNs would fail
            check_finite_start(&self.value(x)?)?;
        }
        let opts = JacobianOptions::default()
            .strategy(s)
            .check_independence(self.check.replace(false));
        let call = self.call;
        let out = crate::per_sample_jacobian_of_aux(|z: &Tensor| (call(z), ()), x, &opts)?;
        let r = self.checked(out.value, "r(x) of the batched Jacobian")?;
        Ok((r, out.jacobian.f_detach()?, true))
    }

    fn user(&self, x: &Tensor) -> Result<(Tensor, Tensor, bool)> {
        let r = self.value(x)?;
        if self.check.get() {
            check_finite_start(&r)?;
        }
        if self.check.replace(false) {
            crate::autograd::grad_mode_on(|| -> Result<()> {
                let xg = x.f_detach()?.set_requires_grad(true);
                let y = (self.call)(&xg)?;
                crate::independence::check_scaled("least_squares", &y, &xg, None, None)
            })?;
        }
        let jac = self.jac.expect("the user route has a Jacobian");
        let j = tch::no_grad(|| jac(x))?;
        let (b, m, n) = (self.b, self.m.get(), self.n);
        if j.size() != [b, m, n] {
            return Err(Error::Shape(format!(
                "the Jacobian closure returned shape {:?}; for x [B, n] = [{b}, {n}] and r [B, m] = [{b}, {m}] it must be [B, m, n] = [{b}, {m}, {n}] ([m, n] for a single problem)",
                j.size()
            )));
        }
        if j.kind() != self.kind || j.device() != self.device {
            return Err(Error::Kind(format!(
                "the Jacobian closure returned {:?} on {:?}; it must match x ({:?} on {:?})",
                j.kind(),
                j.device(),
                self.kind,
                self.device
            )));
        }
        Ok((r, j.f_detach()?, false))
    }

    /// `r″(x)[w, w]` per problem (`w` `[B, n]`), `[B, m]`.
    pub(crate) fn second(&self, x: &Tensor, w: &Tensor) -> Result<Tensor> {
        let xd = x.f_detach()?;
        if self.taylor_second.get() {
            let run = crate::autograd::grad_mode_on(|| {
                crate::native::taylor::collapsed(self.call, &xd, &w.f_unsqueeze(0)?, false)
            });
            match run {
                Ok(t) => return Ok(t.second.f_detach()?.f_reshape([self.b, -1])?),
                Err(Error::NoTaylorRule { .. } | Error::TaylorUnsupported { .. }) => {
                    self.taylor_second.set(false)
                }
                Err(e) => return Err(e),
            }
        }
        crate::autograd::grad_mode_on(|| {
            let xg = xd.set_requires_grad(true);
            let y = (self.call)(&xg)?;
            let opts = JacobianOptions::default();
            let ju = crate::jvp(&y, &xg, w, &opts.create_graph(true))?;
            Ok(crate::jvp(&ju, &xg, w, &opts)?.f_detach()?)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `r″(x)[w, w]` — collapsed Taylor mode, and the nested JVPs it falls back to — against
    /// central differences `(r(x + h w) − 2 r(x) + r(x − h w)) / h²`.
    #[test]
    fn second_directional_derivative_matches_central_differences() {
        // r_i(x) = sin(x0 t_i) e^(x1 t_i) + x0² x1, per row of a batch of two
        let t = Tensor::from_slice(&[0.1f64, 0.5, 1.0, 2.0]);
        let call = |x: &Tensor| -> Result<Tensor> {
            let (a, b) = (x.narrow(1, 0, 1), x.narrow(1, 1, 1));
            Ok((&a * &t).sin() * (&b * &t).exp() + a.square() * &b)
        };
        let x = Tensor::from_slice(&[0.7f64, -0.3, 1.2, 0.4]).view([2, 2]);
        let w = Tensor::from_slice(&[0.5f64, 1.0, -1.0, 0.25]).view([2, 2]);
        let h = 1e-4;
        let fd = (call(&(&x + &w * h)).unwrap() - call(&x).unwrap() * 2.0
            + call(&(&x - &w * h)).unwrap())
            / (h * h);
        for strategy in [Strategy::Auto, Strategy::RowLoop] {
            let res = Residual::new(&call, None, &x, strategy, false).unwrap();
            // Strategy::Auto: collapsed Taylor mode; an explicit strategy still tries it first,
            // so force the fallback once to check it too
            if strategy != Strategy::Auto {
                res.taylor_second.set(false);
            }
            let s = res.second(&x, &w).unwrap();
            let err = (&s - &fd).abs().max().double_value(&[]);
            assert!(err < 1e-6, "{strategy}: r″[w, w] off by {err:e}");
        }
    }
}
