//! The model every method steps on: the loss-corrected linearization at the current points
//! ([`Linear`]: `A = J̃ᵀJ̃`, `g = J̃ᵀr̃`) and its scaled form ([`Scaled`]) in the variables `p_h`
//! (`x = x_k + d ∘ p_h`): `d = 1/D` with Moré's scaling `D` (the running maximum of `J̃`'s
//! column norms) — and, under bounds, Coleman–Li's `√v` on top, with their diagonal term `C`
//! (SciPy's `trf`) — so that `q(p_h) = g_hᵀ p_h + ½ p_hᵀ A_h p_h`, `A_h = d J̃ᵀJ̃ d (+ C)`,
//! `g_h = d J̃ᵀ r̃`.
//!
//! `A_h` is eigendecomposed once per accepted point (`A_h = U diag(s) Uᵀ`, `c = Uᵀ g_h`); every
//! trial step at that point reuses it: Moré's `λ` for a trust region, the minimum-norm
//! Gauss–Newton step, the dogleg's points, the model's value. Where the normal matrix is too
//! ill-conditioned to resolve `J`'s small singular values (condition past `1/√ε`), the same
//! representation comes from the QR factorization of `[J̃ | r̃]` and an SVD of the small `R`
//! ([`qr_model`]) — `J`'s own accuracy, as MINPACK's QR-based `lmpar` has it.

use tch::{Kind, Tensor};

use super::bounds::Bounds;
use super::linalg::{col, dot, eps, matvec, norm};
use super::loss;
use super::options::LeastSquaresOptions;
use crate::error::Result;

/// Newton iterations for Moré's `λ` (MINPACK's `lmpar` takes at most 10).
const LAMBDA_ITERATIONS: usize = 10;

/// The linearization at the current points: the loss's correction, `A = J̃ᵀJ̃`, `g = J̃ᵀr̃`.
pub(crate) struct Linear {
    pub cost: Tensor,
    /// `r̃`, `[B, m]`.
    pub rc: Tensor,
    /// Triggs' row scale `s`, `[B, m]` (none for the linear loss).
    pub scale: Option<Tensor>,
    /// `J̃`, `[B, m, n]`.
    pub jms: Tensor,
    pub a: Tensor,
    pub g: Tensor,
    /// Column norms of `J̃`, `[B, n]`.
    pub cn: Tensor,
    /// `‖√ρ′ ∘ r‖` (`[B]`; `‖r‖` for the linear loss), for the `gtol` test — not `‖r̃‖`, which
    /// the rows whose curvature Triggs' correction clamps blow up.
    pub grn: Tensor,
}

impl Linear {
    pub(crate) fn new(r: &Tensor, jm: &Tensor, opts: &LeastSquaresOptions) -> Result<Linear> {
        let c = loss::correct(opts.loss, opts.loss_scale, r)?;
        let jms = match &c.scale {
            Some(s) => jm.f_mul(&s.f_unsqueeze(2)?)?,
            None => jm.shallow_clone(),
        };
        let jt = jms.f_transpose(1, 2)?;
        let a = jt.f_matmul(&jms)?;
        let g = matvec(&jt, &c.r)?;
        let cn = a.f_diagonal(0, -2, -1)?.f_clamp_min(0.0)?.f_sqrt()?;
        let grn = match &c.weight {
            None => norm(&c.r)?,
            Some(w) => dot(&r.f_square()?, w)?.f_sqrt()?,
        };
        Ok(Linear {
            cost: c.cost,
            grn,
            rc: c.r,
            scale: c.scale,
            jms,
            a,
            g,
            cn,
        })
    }
}

/// The scaled model at the current points and the eigendecomposition of its matrix.
pub(crate) struct Scaled {
    /// `x = x_k + d ∘ p_h`.
    pub d: Tensor,
    pub ah: Tensor,
    pub gh: Tensor,
    /// Coleman–Li's step-back factor `θ` (bounds only).
    pub theta: Option<Tensor>,
    /// Eigenvalues of `A_h` (clamped at 0), `[B, n]`, and eigenvectors, `[B, n, n]`.
    pub s: Tensor,
    pub u: Tensor,
    /// `Uᵀ g_h`.
    pub c: Tensor,
    /// The eigenvalues above `n ε λ_max`: the numerical range (the rest is dropped from the
    /// Gauss–Newton step: the minimum-norm step of a rank-deficient `J`).
    pub keep: Tensor,
}

impl Scaled {
    pub(crate) fn new(
        lin: &Linear,
        dscale: &Tensor,
        bounds: Option<&Bounds>,
        x: &Tensor,
    ) -> Result<Scaled> {
        let (d, diag_h, theta) = match bounds {
            None => (dscale.f_reciprocal()?, None, None),
            Some(bd) => {
                // SciPy's trf_bounds with x_scale = 1/D: v scaled by D where it is a distance.
                let (v, dv) = bd.cl_scaling(x, &lin.g)?;
                let gnorm = lin
                    .g
                    .f_mul(&v)?
                    .f_abs()?
                    .f_amax([-1i64].as_slice(), false)?;
                let theta = gnorm.f_neg()?.f_add_scalar(1.0)?.f_clamp_min(0.995)?;
                let vs = v.f_mul(dscale)?.f_where_self(&dv.f_ne(0.0)?, &v)?;
                let d = vs.f_sqrt()?.f_div(dscale)?;
                let diag_h = lin.g.f_mul(&dv)?.f_div(dscale)?;
                (d, Some(diag_h), Some(theta))
            }
        };
        let mut ah = lin.a.f_mul(&d.f_unsqueeze(2)?)?.f_mul(&d.f_unsqueeze(1)?)?;
        if let Some(c) = &diag_h {
            ah = ah.f_add(&c.f_diag_embed(0, -2, -1)?)?;
        }
        let gh = lin.g.f_mul(&d)?;
        // A non-finite matrix (a problem whose Jacobian was lost) must not stop the others.
        let ah = ah.f_nan_to_num(0.0, 0.0, 0.0)?;
        let (w, u) = ah.f_linalg_eigh("L")?;
        let mut s = w.f_clamp_min(0.0)?;
        let n = s.size()[1];
        let kind = s.kind();
        let top = s.f_amax([-1i64].as_slice(), true)?;
        let mut keep = s.f_gt_tensor(&top.f_mul_scalar(n as f64 * eps(kind))?)?;
        let mut c = matvec(&u.f_transpose(1, 2)?, &gh)?;
        let mut u = u;
        // The normal matrix resolves eigenvalues down to about ε·λ_max, singular values of J
        // down to √ε·σ_max only: where its condition passes 1/√ε, the QR factorization of J
        // itself instead (MINPACK's accuracy: singular values down to ε·σ_max).
        let low = s.f_amin([-1i64].as_slice(), true)?;
        let ill = low
            .f_le_tensor(&top.f_mul_scalar(eps(kind).sqrt())?)?
            .f_squeeze_dim(-1)?
            .f_logical_and(&top.f_squeeze_dim(-1)?.f_gt(0.0)?)?;
        if bool::try_from(ill.f_any()?)? {
            let idx = ill.f_nonzero()?.f_squeeze_dim(1)?;
            let (sq, uq, cq, kq) = qr_model(lin, &d, diag_h.as_ref(), &idx)?;
            s = s.f_index_copy(0, &idx, &sq)?;
            u = u.f_index_copy(0, &idx, &uq)?;
            c = c.f_index_copy(0, &idx, &cq)?;
            keep = keep.f_index_copy(0, &idx, &kq)?;
        }
        Ok(Scaled {
            d,
            ah,
            gh,
            theta,
            s,
            u,
            c,
            keep,
        })
    }

    /// The step `U z` for coefficients `z` in the eigenbasis.
    pub(crate) fn step(&self, z: &Tensor) -> Result<Tensor> {
        matvec(&self.u, z)
    }

    /// Coefficients of the minimum-norm Gauss–Newton step `−A_h⁺ g_h`.
    pub(crate) fn gauss_newton(&self) -> Result<Tensor> {
        let safe = self.s.f_where_self(&self.keep, &self.s.f_ones_like()?)?;
        Ok(self
            .c
            .f_div(&safe)?
            .f_neg()?
            .f_where_self(&self.keep, &self.c.f_zeros_like()?)?)
    }

    /// Coefficients of the damped step `−(A_h + λ I)⁻¹ g_h` (`λ > 0`; at `λ = 0` the
    /// minimum-norm step).
    pub(crate) fn damped(&self, lam: &Tensor) -> Result<Tensor> {
        let q = self.s.f_add(&col(lam, 1)?)?;
        let pos = col(&lam.f_gt(0.0)?, 1)?.f_logical_or(&self.keep)?;
        let safe = q.f_where_self(&pos, &q.f_ones_like()?)?;
        Ok(self
            .c
            .f_div(&safe)?
            .f_neg()?
            .f_where_self(&pos, &q.f_zeros_like()?)?)
    }

    /// `−(A_h + λ I)⁻¹ w` for another right-hand side (geodesic acceleration).
    pub(crate) fn damped_solve(&self, w: &Tensor, lam: &Tensor) -> Result<Tensor> {
        let cw = matvec(&self.u.f_transpose(1, 2)?, w)?;
        let q = self.s.f_add(&col(lam, 1)?)?;
        let pos = col(&lam.f_gt(0.0)?, 1)?.f_logical_or(&self.keep)?;
        let safe = q.f_where_self(&pos, &q.f_ones_like()?)?;
        let z = cw
            .f_div(&safe)?
            .f_neg()?
            .f_where_self(&pos, &q.f_zeros_like()?)?;
        self.step(&z)
    }

    /// Moré's `λ` for the trust region `‖p_h‖ ≤ Δ` (Moré 1978), MINPACK's `lmpar` step for
    /// step on the eigendecomposition: `λ = 0` when the Gauss–Newton step is within `1.1 Δ`,
    /// else Newton iterations on `1/Δ − 1/‖p(λ)‖` from the previous `λ`, kept in the bracket
    /// `[λ_low, ‖g_h‖/Δ]`, until `|‖p(λ)‖ − Δ| ≤ 0.1 Δ` (at most 10 evaluations). Returns the
    /// step's coefficients and `λ`.
    pub(crate) fn trust_region(&self, delta: &Tensor, lam0: &Tensor) -> Result<(Tensor, Tensor)> {
        let z_gn = self.gauss_newton()?;
        let n_gn = norm(&z_gn)?;
        let gn_ok = n_gn.f_sub(delta)?.f_le_tensor(&delta.f_mul_scalar(0.1)?)?;
        if bool::try_from(gn_ok.f_all()?)? {
            // every Gauss–Newton step fits (the common case near a solution): no λ to find
            return Ok((z_gn, delta.f_zeros_like()?));
        }
        let c2 = self.c.f_square()?;
        let full = self.keep.f_all_dim(-1, false)?;
        // λ_low: the Newton iterate from λ = 0 when J has full rank, else 0.
        let safe_s = self.s.f_where_self(&self.keep, &self.s.f_ones_like()?)?;
        let dq3_0 = c2
            .f_div(&safe_s.f_pow_tensor_scalar(3.0)?)?
            .f_where_self(&self.keep, &c2.f_zeros_like()?)?
            .f_sum_dim_intlist(-1, false, None::<Kind>)?;
        let safe_dq = dq3_0.f_where_self(&dq3_0.f_gt(0.0)?, &dq3_0.f_ones_like()?)?;
        let newton0 = n_gn
            .f_sub(delta)?
            .f_mul(&n_gn.f_square()?)?
            .f_div(&delta.f_mul(&safe_dq)?)?;
        let mut lo = newton0
            .f_where_self(
                &full.f_logical_and(&dq3_0.f_gt(0.0)?)?,
                &newton0.f_zeros_like()?,
            )?
            .f_clamp_min(0.0)?;
        let gnorm = c2.f_sum_dim_intlist(-1, false, None::<Kind>)?.f_sqrt()?;
        let mut hi = gnorm.f_div(delta)?;
        let tiny = f64::MIN_POSITIVE;
        hi = hi.f_where_self(
            &hi.f_gt(0.0)?,
            &delta.f_clamp_max(0.1)?.f_reciprocal()?.f_mul_scalar(tiny)?,
        )?;
        let safe_ngn = n_gn.f_where_self(&n_gn.f_gt(0.0)?, &n_gn.f_ones_like()?)?;
        let mut lam = lam0.f_maximum(&lo)?.f_minimum(&hi)?;
        lam = lam.f_where_self(&lam.f_gt(0.0)?, &gnorm.f_div(&safe_ngn)?)?;
        let mut done = gn_ok.shallow_clone();
        let mut prev = delta.f_zeros_like()?;
        for k in 1..=LAMBDA_ITERATIONS {
            let floor = hi.f_mul_scalar(1e-3)?.f_clamp_min(tiny)?;
            lam = lam.f_where_self(&lam.f_gt(0.0)?, &floor)?;
            let q = self.s.f_add(&col(&lam, 1)?)?;
            let pn2 = c2
                .f_div(&q.f_square()?)?
                .f_sum_dim_intlist(-1, false, None::<Kind>)?;
            let phi = pn2.f_sqrt()?.f_sub(delta)?;
            let stop = phi
                .f_abs()?
                .f_le_tensor(&delta.f_mul_scalar(0.1)?)?
                .f_logical_or(
                    &lo.f_eq(0.0)?
                        .f_logical_and(&phi.f_le_tensor(&prev)?)?
                        .f_logical_and(&prev.f_lt(0.0)?)?,
                )?;
            done = done.f_logical_or(&stop)?;
            if k == LAMBDA_ITERATIONS || bool::try_from(done.f_all()?)? {
                break;
            }
            prev = phi.shallow_clone();
            let dq3 = c2.f_div(&q.f_pow_tensor_scalar(3.0)?)?.f_sum_dim_intlist(
                -1,
                false,
                None::<Kind>,
            )?;
            let parc = phi.f_mul(&pn2)?.f_div(&delta.f_mul(&dq3)?)?;
            lo = lo.f_maximum(&lam)?.f_where_self(&phi.f_gt(0.0)?, &lo)?;
            hi = hi.f_minimum(&lam)?.f_where_self(&phi.f_lt(0.0)?, &hi)?;
            let next = lo.f_maximum(&lam.f_add(&parc)?)?;
            let keep = done.f_logical_or(&next.f_isfinite()?.f_logical_not()?)?;
            lam = lam.f_where_self(&keep, &next)?;
        }
        let lam = lam.f_zeros_like()?.f_where_self(&gn_ok, &lam)?;
        let z = z_gn.f_where_self(&col(&gn_ok, 1)?, &self.damped(&lam)?)?;
        Ok((z, lam))
    }

    /// The quadratic model `q(p) = g_hᵀp + ½ pᵀA_h p` of a step given by its eigen-coefficients
    /// (`p = U z`): `cᵀz + ½ Σ s z²`, free of the cancellation of the two terms at a
    /// Gauss–Newton step.
    pub(crate) fn model(&self, z: &Tensor) -> Result<Tensor> {
        let lin = dot(&self.c, z)?;
        Ok(lin.f_add(&dot(&self.s, &z.f_square()?)?.f_mul_scalar(0.5)?)?)
    }
}

/// The model of the problems `idx` from the QR factorization of `[J̃ | r̃]` rather than the
/// normal matrix: `R_h = R diag(d)` (stacked on `diag(√C)` under bounds and factorized again),
/// `R_h = U Σ Vᵀ`; returns `s = σ²`, `V`, `c = Vᵀ g_h = Σ Uᵀ Qᵀr̃` and `σ > n ε σ_max` — the
/// eigen-representation of [`Scaled`] with `J`'s own accuracy.
pub(crate) fn qr_model(
    lin: &Linear,
    d: &Tensor,
    diag_h: Option<&Tensor>,
    idx: &Tensor,
) -> Result<(Tensor, Tensor, Tensor, Tensor)> {
    let jms = lin.jms.f_index_select(0, idx)?; // [k, m, n]
    let n = jms.size()[2];
    let rc = lin.rc.f_index_select(0, idx)?.f_unsqueeze(2)?; // [k, m, 1]
    let aug = Tensor::f_cat(&[&jms, &rc], 2)?; // [k, m, n + 1]
    let (_, mut raug) = Tensor::f_linalg_qr(&aug, "r")?;
    let rows = raug.size()[1];
    if rows < n + 1 {
        // m < n + 1: R has m rows; the missing ones are zeros
        let pad = Tensor::f_zeros(
            [raug.size()[0], n + 1 - rows, n + 1],
            (raug.kind(), raug.device()),
        )?;
        raug = Tensor::f_cat(&[&raug, &pad], 1)?;
    }
    let dk = d.f_index_select(0, idx)?;
    let mut r = raug
        .f_narrow(1, 0, n)?
        .f_narrow(2, 0, n)?
        .f_mul(&dk.f_unsqueeze(1)?)?;
    let mut qtr = raug.f_narrow(1, 0, n)?.f_select(2, n)?; // [k, n]
    if let Some(ch) = diag_h {
        let ck = ch
            .f_index_select(0, idx)?
            .f_clamp_min(0.0)?
            .f_sqrt()?
            .f_diag_embed(0, -2, -1)?;
        let stacked = Tensor::f_cat(&[&r, &ck], 1)?; // [k, 2n, n]
        let rhs = Tensor::f_cat(&[&qtr, &qtr.f_zeros_like()?], 1)?.f_unsqueeze(2)?;
        let (_, r2) = Tensor::f_linalg_qr(&Tensor::f_cat(&[&stacked, &rhs], 2)?, "r")?;
        r = r2.f_narrow(1, 0, n)?.f_narrow(2, 0, n)?;
        qtr = r2.f_narrow(1, 0, n)?.f_select(2, n)?;
    }
    // (torch.svd: tch's linalg_svd always passes a driver, which the CPU refuses)
    let (ur, sv, v) = r.f_svd(true, true)?;
    let w = matvec(&ur.f_transpose(1, 2)?, &qtr)?;
    let c = sv.f_mul(&w)?;
    let top = sv.f_amax([-1i64].as_slice(), true)?;
    let keep = sv.f_gt_tensor(&top.f_mul_scalar(n as f64 * eps(sv.kind()))?)?;
    Ok((sv.f_square()?, v, c, keep))
}
