//! `Forward`: one Jacobian-vector product per input element.
use tch::Tensor;

use super::{dims, empty_blocks, flat, Run};
use crate::autograd::Linearized;
use crate::error::Result;

/// `g(w) = Jᵀw` built once ([`Linearized`]), then one backward pass of `g[:, j]` with respect to
/// `w` per input element `j` gives column `J e_j` of every sample's `J`.
pub(super) fn columns(y2: &Tensor, xs: &[&Tensor], run: &Run<'_>) -> Result<Vec<Tensor>> {
    let (b, m) = dims(y2);
    if m == 0 {
        return empty_blocks(b, xs);
    }
    let lin = Linearized::new(y2, xs, run.pass)?;
    let total: i64 = lin.g.iter().map(|g| g.numel() as i64 / b).sum();
    let mut done = 0;
    lin.g
        .iter()
        .map(|g| {
            let g2 = flat(g, b)?;
            let cols = (0..g2.size()[1])
                .map(|j| {
                    let col = lin.jvp_of(&g2.f_select(1, j)?)?.f_reshape([b, m])?;
                    done += 1;
                    run.report(done, total);
                    Ok(col)
                })
                .collect::<Result<Vec<_>>>()?;
            if cols.is_empty() {
                return Ok(Tensor::f_zeros([b, m, 0], (g2.kind(), g2.device()))?);
            }
            Ok(Tensor::f_stack(&cols, 2)?)
        })
        .collect()
}
