//! The API against PyTorch fixtures (tests/gen-fixtures.py): `jacobian_with` / `jacobian_of`
//! with every strategy, several inputs, strict, create_graph second-order values, batch
//! Jacobians, vjp/jvp/hvp/hessian. f64 at rtol 1e-10 (`common::f64_tol`; the result's kind is
//! checked too) unless a reason is stated.
mod common;

use common::*;
use tch::{Device, Kind, Tensor};
use tch_jacobian::{
    frobenius_norm_sq, hessian, hessian_of, hvp, jacobian_of, jacobian_of_aux, jacobian_with,
    jacobians, jvp, jvp_batched, laplacian_of, per_sample_gradients, per_sample_gradients_of,
    per_sample_gradients_of_module, per_sample_hessian_of, per_sample_jacobian,
    per_sample_jacobian_of, vjp, vjp_batched, JacobianOptions, Result, Strategy,
};

fn opts(s: Strategy) -> JacobianOptions<'static> {
    fast_opts(s)
}

/// Checks `jacobian_of(f, x)` with every strategy, and `jacobian_with(f(x), x)` with those that
/// need no closure, against `<case>_j`.
fn check_all(case: &str, f: &dyn Fn(&Tensor) -> Tensor, x: &Tensor, device: Device) -> Result<()> {
    let expected = fx(case, "j", device);
    let tol = if x.kind() == Kind::Float {
        f32_tol()
    } else {
        f64_tol()
    };
    for s in strategies() {
        let j = jacobian_of(f, x, &opts(s))?;
        tol.check(&j, &expected)
            .unwrap_or_else(|e| panic!("{case} jacobian_of {s:?}: {e}"));
        if !needs_closure(s) {
            let xg = x.detach().set_requires_grad(true);
            let j = jacobian_with(&f(&xg), &[&xg], &opts(s))?.remove(0);
            tol.check(&j, &expected)
                .unwrap_or_else(|e| panic!("{case} jacobian_with {s:?}: {e}"));
        }
    }
    Ok(())
}

fn mlps(device: Device) -> Result<()> {
    for (act, f_act) in [
        ("tanh", (|t: &Tensor| t.tanh()) as fn(&Tensor) -> Tensor),
        ("softplus", |t: &Tensor| t.softplus()),
        ("gelu", |t: &Tensor| t.gelu("none")),
    ] {
        let case = format!("mlp_{act}");
        let (w1, b1, w2, b2) = (
            fx(&case, "w1", device),
            fx(&case, "b1", device),
            fx(&case, "w2", device),
            fx(&case, "b2", device),
        );
        let f = |x: &Tensor| f_act(&(x.matmul(&w1.tr()) + &b1)).matmul(&w2.tr()) + &b2;
        check_all(&case, &f, &fx(&case, "x", device), device)?;
        // PyTorch's other tool, torch.func.jacrev, as a second reference for the default call.
        let x = fx(&case, "x", device);
        f64_tol()
            .check(
                &jacobian_of(f, &x, &JacobianOptions::default())?,
                &fx(&case, "j_rev", device),
            )
            .unwrap_or_else(|e| panic!("{case} against jacrev: {e}"));
    }
    Ok(())
}

fn elementwise_reductions_softmax(device: Device) -> Result<()> {
    check_all(
        "elementwise",
        &|x: &Tensor| x.sin() * x.exp() + x.pow_tensor_scalar(3),
        &fx("elementwise", "x", device),
        device,
    )?;
    let red = |x: &Tensor| {
        // Row-wise over a leading batch dimension when there is one (for Vectorized).
        let d = x.dim() as i64 - 1;
        Tensor::stack(
            &[
                x.sum_dim_intlist(d, false, Kind::Double),
                x.square().mean_dim(d, false, Kind::Double),
                x.logsumexp(d, false),
                x.norm_scalaropt_dim(2, d, false),
            ],
            -1,
        )
    };
    check_all("reductions", &red, &fx("reductions", "x", device), device)?;
    let w = fx("softmax", "w", device);
    check_all(
        "softmax",
        &|x: &Tensor| x.matmul(&w.tr()).softmax(-1, Kind::Double),
        &fx("softmax", "x", device),
        device,
    )
}

fn matrix_output_and_2d_input(device: Device) -> Result<()> {
    let a = fx("matrix_out", "a", device);
    // [3] -> [3, 4]; on a batch [c, 3] -> [c, 3, 4].
    let f = |x: &Tensor| x.unsqueeze(-1) * &a + x.sin().unsqueeze(-1);
    check_all("matrix_out", &f, &fx("matrix_out", "x", device), device)?;
    let b = fx("input_2d", "b", device);
    check_all(
        "input_2d",
        &|x: &Tensor| x.matmul(&b).tanh(),
        &fx("input_2d", "x", device),
        device,
    )
}

fn float32(device: Device) -> Result<()> {
    let w = fx("tanh_f32", "w", device);
    check_all(
        "tanh_f32",
        &|x: &Tensor| x.matmul(&w.tr()).tanh(),
        &fx("tanh_f32", "x", device),
        device,
    )
}

fn non_contiguous_input(device: Device) -> Result<()> {
    let base = fx("noncontig", "base", device);
    let x = base.tr().detach().set_requires_grad(true);
    assert!(!x.is_contiguous());
    let y = x.square().sum_dim_intlist(0, false, Kind::Double) * x.get(0);
    for s in graph_strategies() {
        let j = jacobian_with(&y, &[&x], &opts(s))?.remove(0);
        f64_tol()
            .check(&j, &fx("noncontig", "j", device))
            .unwrap_or_else(|e| panic!("{s:?}: {e}"));
    }
    Ok(())
}

fn several_inputs_strict(device: Device) -> Result<()> {
    let (a, b, c) = (
        fx_var("two_inputs", "a", device),
        fx_var("two_inputs", "b", device),
        fx_var("two_inputs", "c", device),
    );
    let y = &a * b.sin();
    for s in graph_strategies() {
        let js = jacobian_with(&y, &[&a, &b, &c], &opts(s))?;
        for (j, name) in js.iter().zip(["ja", "jb", "jc"]) {
            f64_tol()
                .check(j, &fx("two_inputs", name, device))
                .unwrap_or_else(|e| panic!("{s:?} {name}: {e}"));
        }
        assert_eq!(js[2].size(), [3, 2]);
        // PyTorch: "Output 0 of the user-provided function is independent of input 2."
        assert_err(
            jacobian_with(&y, &[&a, &b, &c], &opts(s).strict(true)),
            &["y is not connected to input 2"],
        );
        // strict with every input used is fine.
        assert_eq!(
            jacobian_with(&y, &[&a, &b], &opts(s).strict(true))?.len(),
            2
        );
    }
    Ok(())
}

/// create_graph: the gradient of ‖J‖_F² with respect to the weights equals PyTorch's.
fn create_graph_second_order(device: Device) -> Result<()> {
    let mut cases = vec![
        Strategy::RowLoop,
        Strategy::Forward,
        Strategy::Vectorized {
            chunk_size: Some(2),
        },
        Strategy::VectorizedForward {
            chunk_size: Some(2),
        },
    ];
    cases.extend(batched());
    for s in cases {
        let w = fx_var("create_graph_sigmoid", "w", device);
        let x = fx("create_graph_sigmoid", "x", device);
        let j = jacobian_of(
            |x: &Tensor| x.matmul(&w.tr()).sigmoid(),
            &x,
            &opts(s).create_graph(true),
        )?;
        let fro = frobenius_norm_sq(&j)?;
        f64_tol()
            .check(&fro, &fx("create_graph_sigmoid", "fro", device))
            .unwrap();
        let g = Tensor::run_backward(&[&fro], &[&w], false, false).remove(0);
        f64_tol()
            .check(&g, &fx("create_graph_sigmoid", "grad_w", device))
            .unwrap_or_else(|e| panic!("{s:?}: {e}"));

        let c = "create_graph_mlp";
        let (w1, b1, w2, b2) = tanh_mlp(c, device);
        let (w1, w2) = (w1.set_requires_grad(true), w2.set_requires_grad(true));
        let f = |x: &Tensor| (x.matmul(&w1.tr()) + &b1).tanh().matmul(&w2.tr()) + &b2;
        let j = jacobian_of(f, &fx(c, "x", device), &opts(s).create_graph(true))?;
        let gs = Tensor::run_backward(&[frobenius_norm_sq(&j)?], &[&w1, &w2], false, false);
        f64_tol()
            .check(&gs[0], &fx(c, "grad_w1", device))
            .unwrap_or_else(|e| panic!("{s:?} w1: {e}"));
        f64_tol()
            .check(&gs[1], &fx(c, "grad_w2", device))
            .unwrap_or_else(|e| panic!("{s:?} w2: {e}"));
    }
    Ok(())
}

/// The weights `w1, b1, w2, b2` of a tanh MLP fixture.
fn tanh_mlp(c: &str, device: Device) -> (Tensor, Tensor, Tensor, Tensor) {
    let w = |name: &str| fx(c, name, device);
    (w("w1"), w("b1"), w("w2"), w("b2"))
}

fn batch_matches_vmap_jacrev(device: Device) -> Result<()> {
    let c = "batch_mlp";
    let (w1, b1, w2, b2) = tanh_mlp(c, device);
    let f = |x: &Tensor| (x.matmul(&w1.tr()) + &b1).tanh().matmul(&w2.tr()) + &b2;
    let x = fx(c, "x", device);
    for s in strategies() {
        let j = per_sample_jacobian_of(f, &x, &opts(s))?;
        f64_tol()
            .check(&j, &fx(c, "j", device))
            .unwrap_or_else(|e| panic!("per_sample_jacobian_of {s:?}: {e}"));
        if !needs_closure(s) {
            let xg = x.detach().set_requires_grad(true);
            let j = per_sample_jacobian(&f(&xg), &xg, &opts(s))?;
            f64_tol()
                .check(&j, &fx(c, "j", device))
                .unwrap_or_else(|e| panic!("per_sample_jacobian {s:?}: {e}"));
        }
    }
    // Per-sample 2-D inputs: [B, 2, 4] -> [B, 3] -> J [B, 3, 2, 4].
    let w = fx("batch_2d", "w", device);
    let f2 = |x: &Tensor| x.flatten(1, -1).matmul(&w.tr()).sigmoid();
    for s in strategies() {
        let j = per_sample_jacobian_of(f2, &fx("batch_2d", "x", device), &opts(s))?;
        assert_eq!(j.size(), [5, 3, 2, 4]);
        f64_tol()
            .check(&j, &fx("batch_2d", "j", device))
            .unwrap_or_else(|e| panic!("batch_2d {s:?}: {e}"));
    }
    Ok(())
}

fn products_and_hessian(device: Device) -> Result<()> {
    let w = fx("products", "w", device);
    let x = fx_var("products", "x", device);
    let y = w.matmul(&x).tanh();
    let o = JacobianOptions::default();
    f64_tol()
        .check(
            &vjp(&y, &x, &fx("products", "v", device), &o)?,
            &fx("products", "vjp", device),
        )
        .unwrap();
    f64_tol()
        .check(
            &jvp(&y, &x, &fx("products", "u", device), &o)?,
            &fx("products", "jvp", device),
        )
        .unwrap();

    let w = fx("hessian", "w", device);
    let x = fx_var("hessian", "x", device);
    let g = w.matmul(&x).tanh().square().sum(Kind::Double) + x.prod(Kind::Double);
    for s in graph_strategies() {
        f64_tol()
            .check(&hessian(&g, &x, &opts(s))?, &fx("hessian", "h", device))
            .unwrap_or_else(|e| panic!("{s:?}: {e}"));
    }
    f64_tol()
        .check(
            &hvp(&g, &x, &fx("hessian", "v", device), &o)?,
            &fx("hessian", "hvp", device),
        )
        .unwrap();
    Ok(())
}

device_tests!(
    mlps,
    elementwise_reductions_softmax,
    matrix_output_and_2d_input,
    float32,
    non_contiguous_input,
    several_inputs_strict,
    create_graph_second_order,
    batch_matches_vmap_jacrev,
    products_and_hessian,
);

/// `jacobian_of_aux`: J, the value and the auxiliary output against `jacrev(f, has_aux=True)`.
fn value_and_aux(device: Device) -> Result<()> {
    let w = fx("value_aux", "w", device);
    let x = fx("value_aux", "x", device);
    for s in strategies() {
        let out = jacobian_of_aux(
            |x: &Tensor| (x.matmul(&w.tr()).tanh(), x.square().sum(Kind::Double)),
            &x,
            &opts(s),
        )?;
        f64_tol()
            .check(&out.jacobian, &fx("value_aux", "j", device))
            .unwrap_or_else(|e| panic!("{s:?}: {e}"));
        f64_tol()
            .check(&out.value, &fx("value_aux", "value", device))
            .unwrap();
        f64_tol()
            .check(&out.aux, &fx("value_aux", "aux", device))
            .unwrap();
        assert!(!out.value.requires_grad());
    }
    Ok(())
}

/// `vjp_batched` / `jvp_batched` against `vmap(vjp_fn)` / `vmap(jvp)`.
fn many_products(device: Device) -> Result<()> {
    let c = "products_many";
    let w = fx(c, "w", device);
    let x = fx_var(c, "x", device);
    let y = x.matmul(&w.tr()).tanh();
    let o = JacobianOptions::default().vmap_fallback(false);
    f64_tol()
        .check(
            &vjp_batched(&y, &x, &fx(c, "v", device), &o)?,
            &fx(c, "vjps", device),
        )
        .unwrap();
    f64_tol()
        .check(
            &jvp_batched(&y, &x, &fx(c, "u", device), &o)?,
            &fx(c, "jvps", device),
        )
        .unwrap();
    assert_err(
        vjp_batched(&y, &x, &fx(c, "u", device), &o),
        &[
            "vjp_batched needs v: [k ≥ 0, *y.shape] = [k, 4]",
            "got v [6, 5]",
        ],
    );
    Ok(())
}

/// `jacobians`: several outputs and several inputs against `functional.jacobian` with tuples.
fn several_outputs(device: Device) -> Result<()> {
    let (a, b) = (
        fx_var("outputs", "a", device),
        fx_var("outputs", "b", device),
    );
    let y0 = &a * b.sum(Kind::Double);
    let y1 = b.unsqueeze(1) * a.sin();
    for s in graph_strategies() {
        let js = jacobians(&[&y0, &y1], &[&a, &b], &opts(s))?;
        for (i, row) in js.iter().enumerate() {
            for (k, j) in row.iter().enumerate() {
                f64_tol()
                    .check(j, &fx("outputs", &format!("j{i}{k}"), device))
                    .unwrap_or_else(|e| panic!("{s:?} j{i}{k}: {e}"));
            }
        }
    }
    Ok(())
}

/// `hessian_of` against `torch.func.hessian`.
fn hessian_of_closure(device: Device) -> Result<()> {
    let w = fx("hessian_of", "w", device);
    let x = fx("hessian_of", "x", device);
    let g = |x: &Tensor| x.matmul(&w.tr()).tanh().square().sum(Kind::Double) + x.prod(Kind::Double);
    for s in graph_strategies() {
        f64_tol()
            .check(
                &hessian_of(g, &x, &opts(s))?,
                &fx("hessian_of", "h", device),
            )
            .unwrap_or_else(|e| panic!("{s:?}: {e}"));
    }
    Ok(())
}

/// `per_sample_hessian_of` and `laplacian_of` against `vmap(hessian(u))` for a PINN-style tanh MLP
/// u: ℝ³ → ℝ, and the gradient of the Laplacian loss `mean((Δu)²)` to `W1` (third derivatives)
/// against PyTorch's, with every strategy.
fn batch_hessian_matches(device: Device) -> Result<()> {
    let c = "batch_hessian";
    let w1 = fx_var(c, "w1", device);
    let (b1, w2, b2, w3, b3) = (
        fx(c, "b1", device),
        fx(c, "w2", device),
        fx(c, "b2", device),
        fx(c, "w3", device),
        fx(c, "b3", device),
    );
    let x = fx(c, "x", device);
    let u1 = |x: &Tensor| {
        x.linear(&w1, Some(&b1))
            .tanh()
            .linear(&w2, Some(&b2))
            .tanh()
            .linear(&w3, Some(&b3))
    };
    let u = |x: &Tensor| u1(x).squeeze_dim(-1);
    // The strategies that need the gradient's closure are refused (it does not exist).
    for s in [
        Strategy::Vectorized { chunk_size: None },
        Strategy::VectorizedForward { chunk_size: None },
    ] {
        assert_err(
            per_sample_hessian_of(u, &x, &opts(s)),
            &["needs the closure of the gradient"],
        );
        assert_err(laplacian_of(u, &x, &opts(s)), &["makes no Laplacian"]);
    }
    for s in graph_strategies() {
        f64_tol()
            .check(
                &per_sample_hessian_of(u, &x, &opts(s))?,
                &fx(c, "h", device),
            )
            .unwrap_or_else(|e| panic!("per_sample_hessian_of {s:?}: {e}"));
        f64_tol()
            .check(&laplacian_of(u1, &x, &opts(s))?, &fx(c, "lap", device))
            .unwrap_or_else(|e| panic!("laplacian_of {s:?}: {e}"));
        let lap = laplacian_of(u, &x, &opts(s).create_graph(true))?;
        let g = Tensor::run_backward(&[lap.square().mean(Kind::Double)], &[&w1], false, false);
        f64_tol()
            .check(&g[0], &fx(c, "grad_w1", device))
            .unwrap_or_else(|e| panic!("d mean(Δu²)/dW1, {s:?}: {e}"));
    }
    // Bad input is an error: a closure with more than one value per sample, an empty batch.
    let o = JacobianOptions::default();
    assert_err(
        per_sample_hessian_of(|x: &Tensor| x.tanh(), &x, &o),
        &["one scalar per sample", "[4, 3]"],
    );
    assert_err(laplacian_of(u, &x.narrow(0, 0, 0), &o), &["empty batch"]);
    // A linear u has H = 0 (its gradient does not depend on x).
    let h = per_sample_hessian_of(
        |x: &Tensor| x.sum_dim_intlist(1, false, Kind::Double),
        &x,
        &o,
    )?;
    assert_eq!(h.abs().max().double_value(&[]), 0.0);
    Ok(())
}

/// `per_sample_gradients` against `vmap(grad(functional_call(...)))`: an MLP and a conv net.
fn per_sample_gradients_match(device: Device) -> Result<()> {
    let p = |case: &str, names: &[&str]| -> Vec<(String, Tensor)> {
        names
            .iter()
            .map(|n| (n.to_string(), fx_var(case, n, device)))
            .collect()
    };
    let mlp = p("psg_mlp", &["w1", "b1", "w2", "b2"]);
    let (x, t) = (fx("psg_mlp", "x", device), fx("psg_mlp", "t", device));
    let logits = (x.matmul(&mlp[0].1.tr()) + &mlp[1].1)
        .tanh()
        .matmul(&mlp[2].1.tr())
        + &mlp[3].1;
    let losses = logits.cross_entropy_loss::<Tensor>(&t, None, tch::Reduction::None, -100, 0.0);
    let conv = p("psg_conv", &["wc", "bc", "wl", "bl"]);
    let (xc, tc) = (fx("psg_conv", "x", device), fx("psg_conv", "t", device));
    let logits_c = xc
        .conv2d(&conv[0].1, Some(&conv[1].1), [1, 1], [0, 0], [1, 1], 1)
        .relu()
        .flatten(1, -1)
        .matmul(&conv[2].1.tr())
        + &conv[3].1;
    let losses_c =
        logits_c.cross_entropy_loss::<Tensor>(&tc, None, tch::Reduction::None, -100, 0.0);
    // The same losses by log_softmax and gather, whose backward passes have batching rules
    // (cross_entropy's nll_loss_backward has none: the batched engine loops over that op).
    let by_gather = |logits: &Tensor, t: &Tensor| {
        -logits
            .log_softmax(-1, Kind::Double)
            .gather(1, &t.unsqueeze(1), false)
            .squeeze_dim(1)
    };
    let (gathered, gathered_c) = (by_gather(&logits, &t), by_gather(&logits_c, &tc));
    for s in graph_strategies() {
        let cases = [
            ("psg_mlp", &losses, &mlp, false),
            ("psg_conv", &losses_c, &conv, false),
            ("psg_mlp", &gathered, &mlp, true),
            ("psg_conv", &gathered_c, &conv, true),
        ];
        for (case, losses, params, fast) in cases {
            let o = if fast {
                opts(s)
            } else {
                JacobianOptions::default().strategy(s)
            };
            let gs = per_sample_gradients(losses, params, &o)?;
            for (name, g) in &gs {
                f64_tol()
                    .check(g, &fx(case, &format!("g_{name}"), device))
                    .unwrap_or_else(|e| panic!("{case} {s:?} {name}: {e}"));
            }
        }
    }
    assert_err(
        per_sample_gradients(&losses.sum(Kind::Double), &mlp, &opts(Strategy::Auto)),
        &["one loss per sample", "reduction = none"],
    );
    Ok(())
}

/// `per_sample_gradients_of` (the closure of one sample under vmap(grad), and the loop over
/// samples) against `vmap(grad(functional_call(...)))`: the MLP and the conv net, with the vmap
/// fallback off (cross_entropy's nll_loss_backward has the crate's rule); bad closures are errors.
fn per_sample_gradients_of_match(device: Device) -> Result<()> {
    let p = |case: &str, names: &[&str]| -> Vec<(String, Tensor)> {
        names
            .iter()
            .map(|n| (n.to_string(), fx(case, n, device)))
            .collect()
    };
    let ce = |logits: &Tensor, t: &Tensor| -> Result<Tensor> {
        Ok(logits.f_unsqueeze(0)?.f_cross_entropy_loss::<Tensor>(
            &t.f_unsqueeze(0)?,
            None,
            tch::Reduction::Mean,
            -100,
            0.0,
        )?)
    };
    // One sample: x [5], t [].
    let mlp_loss = |p: &[Tensor], s: &[Tensor]| -> Result<Tensor> {
        let h = (s[0].f_matmul(&p[0].tr())? + &p[1]).f_tanh()?;
        ce(&(h.f_matmul(&p[2].tr())? + &p[3]), &s[1])
    };
    // One sample: x [1, 6, 6], t [].
    let conv_loss = |p: &[Tensor], s: &[Tensor]| -> Result<Tensor> {
        let h = s[0]
            .f_unsqueeze(0)?
            .f_conv2d(&p[0], Some(&p[1]), [1, 1], [0, 0], [1, 1], 1)?
            .f_relu()?
            .f_flatten(0, -1)?;
        ce(&(h.f_matmul(&p[2].tr())? + &p[3]), &s[1])
    };
    let mlp = p("psg_mlp", &["w1", "b1", "w2", "b2"]);
    let conv = p("psg_conv", &["wc", "bc", "wl", "bl"]);
    let data = |case: &str| (fx(case, "x", device), fx(case, "t", device));
    let strategies = [Strategy::Auto, Strategy::RowLoop];
    for s in strategies {
        for (case, params, loss) in [
            (
                "psg_mlp",
                &mlp,
                &mlp_loss as &dyn Fn(&[Tensor], &[Tensor]) -> Result<Tensor>,
            ),
            ("psg_conv", &conv, &conv_loss),
        ] {
            let (x, t) = data(case);
            let out = per_sample_gradients_of(loss, params, &[&x, &t], &opts(s))?;
            assert_eq!(out.losses.size(), [x.size()[0]]);
            for (name, g) in &out.gradients {
                f64_tol()
                    .check(g, &fx(case, &format!("g_{name}"), device))
                    .unwrap_or_else(|e| panic!("{case} {s} {name}: {e}"));
            }
        }
    }
    let (x, t) = data("psg_mlp");
    let o = JacobianOptions::default();
    // Parameters that require grad (VarStore variables) give the same, and keep their graph.
    let trainable: Vec<(String, Tensor)> = mlp
        .iter()
        .map(|(n, p)| (n.clone(), p.detach().set_requires_grad(true)))
        .collect();
    let out = per_sample_gradients_of(mlp_loss, &trainable, &[&x, &t], &o)?;
    f64_tol()
        .check(&out.gradients[0].1, &fx("psg_mlp", "g_w1", device))
        .unwrap();
    assert!(!out.gradients[0].1.requires_grad());
    if tch_jacobian::native::available() {
        let panics = |_: &[Tensor], _: &[Tensor]| -> Result<Tensor> { panic!("boom") };
        assert_err(
            per_sample_gradients_of(panics, &mlp, &[&x, &t], &o),
            &["panicked: boom"],
        );
    }
    let vector = |p: &[Tensor], s: &[Tensor]| -> Result<Tensor> { Ok(s[0].f_matmul(&p[0].tr())?) };
    assert_err(
        per_sample_gradients_of(vector, &mlp, &[&x], &o),
        &["one scalar per sample", "[8]"],
    );
    let failing = |_: &[Tensor], _: &[Tensor]| -> Result<Tensor> {
        Err(tch_jacobian::Error::InvalidArgument(
            "my model says no".into(),
        ))
    };
    assert_err(
        per_sample_gradients_of(failing, &mlp, &[&x], &o),
        &["my model says no"],
    );
    assert_err(
        per_sample_gradients_of(mlp_loss, &mlp, &[&x, &t.narrow(0, 0, 2)], &o),
        &["same leading batch dimension", "B = 6"],
    );
    assert_err(
        per_sample_gradients_of(mlp_loss, &mlp, &[&x, &t], &o.create_graph(true)),
        &["create_graph"],
    );
    let empty = per_sample_gradients_of(
        mlp_loss,
        &mlp,
        &[&x.narrow(0, 0, 0), &t.narrow(0, 0, 0)],
        &o,
    )?;
    assert_eq!(empty.gradients[0].1.size(), [0, 8, 5]);
    Ok(())
}

/// `per_sample_gradients_of_module` (a `tch::nn` model built by a function) against
/// `vmap(grad(functional_call(...)))` on the conv net, with a frozen variable and a builder that
/// does not match the VarStore.
fn per_sample_gradients_of_module_match(device: Device) -> Result<()> {
    use tch::nn::{self, Module};
    let net = |p: &nn::Path| {
        nn::seq()
            .add(nn::conv2d(p / "conv", 1, 2, 3, Default::default()))
            .add_fn(|x| x.relu().flatten(1, -1))
            .add(nn::linear(p / "fc", 2 * 4 * 4, 3, Default::default()))
    };
    let mut vs = nn::VarStore::new(device);
    let _model = net(&vs.root());
    vs.double();
    let c = "psg_conv";
    for (name, f) in [
        ("conv.weight", "wc"),
        ("conv.bias", "bc"),
        ("fc.weight", "wl"),
        ("fc.bias", "bl"),
    ] {
        tch::no_grad(|| {
            vs.variables()[name]
                .shallow_clone()
                .copy_(&fx(c, f, device))
        });
    }
    let (x, t) = (fx(c, "x", device), fx(c, "t", device));
    let loss = |m: &nn::Sequential, s: &[Tensor]| -> Result<Tensor> {
        Ok(m.forward(&s[0].f_unsqueeze(0)?)
            .f_cross_entropy_loss::<Tensor>(
                &s[1].f_unsqueeze(0)?,
                None,
                tch::Reduction::Mean,
                -100,
                0.0,
            )?)
    };
    let expected = |name: &str| {
        let f = match name {
            "conv.weight" => "g_wc",
            "conv.bias" => "g_bc",
            "fc.weight" => "g_wl",
            _ => "g_bl",
        };
        fx(c, f, device)
    };
    for s in [Strategy::Auto, Strategy::RowLoop] {
        let out = per_sample_gradients_of_module(&vs, net, loss, &[&x, &t], &opts(s))?;
        assert_eq!(out.gradients.len(), 4);
        for (name, g) in &out.gradients {
            f64_tol()
                .check(g, &expected(name))
                .unwrap_or_else(|e| panic!("{s} {name}: {e}"));
        }
    }
    // A frozen variable is not differentiated but keeps the VarStore's value.
    let _ = vs.variables()["fc.weight"].set_requires_grad(false);
    let out =
        per_sample_gradients_of_module(&vs, net, loss, &[&x, &t], &JacobianOptions::default())?;
    let names: Vec<&str> = out.gradients.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["conv.bias", "conv.weight", "fc.bias"]);
    for (name, g) in &out.gradients {
        f64_tol()
            .check(g, &expected(name))
            .unwrap_or_else(|e| panic!("frozen fc.weight, {name}: {e}"));
    }
    // A builder that makes another model is refused by name.
    let other = |p: &nn::Path| {
        nn::seq()
            .add(nn::conv2d(p / "conv", 1, 2, 3, Default::default()))
            .add_fn(|x| x.relu().flatten(1, -1))
            .add(nn::linear(p / "head", 2 * 4 * 4, 3, Default::default()))
    };
    assert_err(
        per_sample_gradients_of_module(&vs, other, loss, &[&x, &t], &JacobianOptions::default()),
        &["fc.bias"],
    );
    Ok(())
}

device_tests!(
    value_and_aux,
    many_products,
    several_outputs,
    hessian_of_closure,
    batch_hessian_matches,
    per_sample_gradients_match,
    per_sample_gradients_of_match,
    per_sample_gradients_of_module_match,
);
