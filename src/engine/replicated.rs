//! `Vectorized` and `VectorizedForward`: `f` evaluated again on stacked copies of `x`.
use tch::{Kind, Tensor};

use super::{chunk_len, dims, row, Blocks, Closure, Run};
use crate::autograd::{vjp_into, Linearized};
use crate::closure::PANICKED;
use crate::error::{Error, Result};
use crate::testing::contract_rtol;

/// `f` evaluated once on `x` stacked `c` times per sample (`X`, shape `[B·c, *in]`, `Y = f(X)`
/// viewed as `[B, c, m]`), for each chunk of `c` rows (reverse) or columns (forward) starting at
/// `start`:
///
/// * reverse: one backward pass of `Σ_{b,r} Y[b, r, start + r]`; the gradient's row `(b, r)` is
///   sample `b`'s `J[start + r, :]`;
/// * forward: `G = ∂(Σ Y ⊙ W)/∂X` built with create_graph for a zero `W` shaped like `Y`
///   ([`Linearized`]), then one backward pass of `Σ_{b,r} G[b, r, start + r]` with respect to
///   `W`: its row `(b, r)` is `J e_{start + r}`, sample `b`'s column `start + r`.
///
/// `x` is the input `y2 = f(x)` (a rows view) was computed from: `[B, *in]` when the closure is
/// batched, `[*in]` (B = 1) otherwise; the closure evaluates `f` on `[B·c, *in]`.
///
/// Two checks catch closures that are not row-wise: the first replicated row of `f(X)` must equal
/// `f(x)`, and the first Jacobian row (column) must equal the one that a plain backward pass
/// (JVP) through the caller's graph gives — both to [`contract_rtol`].
pub(super) fn replicated(
    closure: &Closure<'_>,
    x: &Tensor,
    y2: &Tensor,
    forward: bool,
    chunk_size: Option<usize>,
    run: &Run<'_>,
) -> Result<Tensor> {
    let (b, m) = dims(y2);
    let x2 = if closure.batched {
        x.shallow_clone()
    } else {
        x.f_unsqueeze(0)?
    };
    let in_shape = x2.size()[1..].to_vec();
    let n: i64 = in_shape.iter().product();
    if m == 0 || n == 0 {
        return Ok(Tensor::f_zeros([b, m, n], (x2.kind(), x2.device()))?);
    }
    let (total, other) = if forward { (n, m) } else { (m, n) };
    let chunk = chunk_len(chunk_size, total);
    let shape = ([b, total, other], (x2.kind(), x2.device()));
    let mut blocks = Blocks::new(&[shape], chunk < total, &run.pass)?;
    let mut start = 0;
    while start < total {
        let len = chunk.min(total - start);
        let mut rep = vec![b, len];
        rep.extend_from_slice(&in_shape);
        let mut flat_shape = vec![b * len];
        flat_shape.extend_from_slice(&in_shape);
        let xr = x2
            .f_unsqueeze(1)?
            .f_expand(rep.as_slice(), false)?
            .f_reshape(flat_shape.as_slice())?;
        // A closure written for one input shape may panic on the stacked copies (a tch method
        // that unwraps, e.g. `view([1, 3])`): that is the same broken contract as a wrong shape,
        // an error, not a panic through the caller.
        let yr = crate::closure::call_guarded(|| (closure.call)(&xr)).map_err(|e| match e {
            Error::Contract(m) if m.starts_with(PANICKED) => Error::Contract(format!(
                "Vectorized strategy: f panicked on {} stacked copies of the input (shape {:?}): {}; f must act row-wise on a leading batch dimension (or use Strategy::RowLoop)",
                b * len,
                xr.size(),
                &m[PANICKED.len()..]
            )),
            e => e,
        })?;
        if yr.size().first() != Some(&(b * len)) || yr.numel() as i64 != b * len * m {
            return Err(Error::Contract(format!(
                "Vectorized strategy: f was given {} stacked copies of the input (shape {:?}) and must return {} rows of {} elements, but returned shape {:?}; f must act row-wise on a leading batch dimension (or use Strategy::RowLoop)",
                b * len,
                xr.size(),
                b * len,
                m,
                yr.size()
            )));
        }
        let yr = yr.f_reshape([b, len, m])?;
        if start == 0 {
            let first = yr.f_select(1, 0)?;
            if let Some(diff) = differs(&first, &y2.f_reshape([b, m])?)? {
                return Err(Error::Contract(format!(
                    "Vectorized strategy: f(x repeated) row 0 differs from f(x) by up to {diff:.3e} (input shape {:?}); f mixes rows of its leading batch dimension (e.g. a sum over it or batch norm) — use Strategy::RowLoop or Strategy::Forward",
                    x2.size()
                )));
            }
        }
        let idx = Tensor::f_arange_start(start, start + len, (Kind::Int64, yr.device()))?
            .f_view([1, len, 1])?
            .f_expand([b, len, 1], false)?;
        let block = if forward {
            let lin = Linearized::new(&yr, &[&xr], run.pass)?;
            let g = lin.g[0].f_reshape([b, len, n])?;
            lin.jvp_of(&g.f_gather(2, &idx, false)?.f_sum(None::<Kind>)?)?
        } else {
            let root = yr.f_gather(2, &idx, false)?.f_sum(None::<Kind>)?;
            vjp_into(&root, &[&xr], run.pass)?.remove(0)
        }
        .f_reshape([b, len, other])?;
        if start == 0 {
            let reference = if forward {
                first_column(x, y2, b, run)?
            } else {
                first_row(x, y2, b, run)?
            };
            if let Some(reference) = reference {
                check_first(&block.f_select(1, 0)?, &reference, &x2)?;
            }
        }
        blocks.put(start, vec![block])?;
        start += len;
        run.report(start, total);
    }
    let j = blocks.finish()?.remove(0);
    Ok(if forward { j.f_transpose(1, 2)? } else { j })
}

/// Row 0 of every sample's Jacobian by a plain backward pass of `y2[.., 0]`, `[B, n]`.
fn first_row(x: &Tensor, y2: &Tensor, b: i64, run: &Run<'_>) -> Result<Option<Tensor>> {
    if !y2.requires_grad() {
        return Ok(None);
    }
    let pass = run.pass.create_graph(false).strict(false);
    let g = vjp_into(&row(y2, 0)?, &[x], pass)?.remove(0);
    Ok(Some(g.f_reshape([b, -1])?))
}

/// Column 0 of every sample's Jacobian by a JVP with `e_0`, `[B, m]`.
fn first_column(x: &Tensor, y2: &Tensor, b: i64, run: &Run<'_>) -> Result<Option<Tensor>> {
    if !y2.requires_grad() {
        return Ok(None);
    }
    let lin = Linearized::new(y2, &[x], run.pass.create_graph(false).strict(false))?;
    let g = &lin.g[0];
    if !g.requires_grad() {
        return Ok(None);
    }
    let root = g.f_reshape([b, -1])?.f_select(1, 0)?.f_sum(None::<Kind>)?;
    Ok(Some(lin.jvp_of(&root)?.f_reshape([b, -1])?))
}

/// The first Jacobian row (column) from the stacked pass against the one from `f(x)`'s own
/// graph; a mismatch means the closure mixes rows.
fn check_first(got: &Tensor, reference: &Tensor, x2: &Tensor) -> Result<()> {
    if let Some(diff) = differs(got, reference)? {
        return Err(Error::Contract(format!(
            "Vectorized strategy: the first Jacobian row/column from f(x repeated) differs from the one of f(x) by up to {diff:.3e} (input shape {:?}); f mixes rows of its leading batch dimension (e.g. a mean over it or batch norm) — use Strategy::RowLoop or Strategy::Forward",
            x2.size()
        )));
    }
    Ok(())
}

/// `Some(max|a − b|)` when `max|a − b| > rtol · max|b| + rtol · 1e-3` with
/// [`contract_rtol`]`(dtype, device)`, or when exactly one of them has NaNs; else `None`.
fn differs(a: &Tensor, b: &Tensor) -> Result<Option<f64>> {
    crate::autograd::with_grad_mode(false, || {
        let diff = a.f_sub(b)?.f_abs()?.f_max()?.f_double_value(&[])?;
        let scale = b.f_abs()?.f_max()?.f_double_value(&[])?;
        let rtol = contract_rtol(b.kind(), b.device());
        let bad = diff > rtol * scale + rtol * 1e-3 || diff.is_nan() != scale.is_nan();
        Ok(bad.then_some(diff))
    })
}
