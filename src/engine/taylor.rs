//! `Taylor`: the Jacobian's columns from one collapsed Taylor pass of the closure along the
//! identity directions — `T[j] = J e_j`, every op of `f` evaluated once ([`crate::laplacian`](mod@crate::laplacian)'s
//! engine, `csrc/taylor_*.cpp`).
use tch::Tensor;

use super::{dims, Closure, Run};
use crate::error::{Error, Result};

/// `[B, m, n]`: the closure's Jacobian (per sample when the closure is batched), for the rows
/// view `y2` of its output at `x`.
pub(super) fn taylor(c: &Closure<'_>, x: &Tensor, y2: &Tensor, run: &Run<'_>) -> Result<Tensor> {
    let (b, m) = dims(y2);
    if run.pass.strict && !y2.requires_grad() {
        return Err(Error::NotConnected {
            output: run.pass.names.output.to_string(),
            input: run.pass.names.input(0),
            detail: "the output does not depend on the input (strict mode)".into(),
        });
    }
    let shape = x.size();
    let n = if c.batched {
        x.numel() as i64 / b.max(1)
    } else {
        x.numel() as i64
    };
    // The identity over one sample's elements, broadcast over the batch: [n, *x.shape].
    let eye = Tensor::f_eye(n, (x.kind(), x.device()))?;
    let directions = if c.batched {
        let mut one = vec![n, 1];
        one.extend_from_slice(&shape[1..]);
        let mut full = vec![n];
        full.extend_from_slice(&shape);
        eye.f_reshape(one.as_slice())?
            .f_expand(full.as_slice(), false)?
    } else {
        let mut full = vec![n];
        full.extend_from_slice(&shape);
        eye.f_reshape(full.as_slice())?
    };
    let t =
        crate::native::taylor::collapsed(|z| (c.call)(z), x, &directions, run.pass.create_graph)?;
    run.report(n, n);
    // T: [n, *y.shape] → [n, B, m] → [B, m, n]
    Ok(t.first.f_reshape([n, b, m])?.f_permute([1, 2, 0])?)
}
