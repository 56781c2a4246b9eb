//! A short run as a test (`cargo test --example jacobian_reg`, included in `cargo test`): both
//! models, every estimator, a few epochs on a subset of the digits, the evaluation on a small
//! grid, and the JSON lines.
use super::*;

/// The committed digits, on the CPU.
fn digits_cpu() -> Data {
    digits(Path::new(DIGITS_DIR), Device::Cpu).expect("the committed digits in data/digits")
}

fn args(list: &[&str]) -> Result<Args> {
    Ok(parse_args(list.iter().map(|s| s.to_string()))?)
}

#[test]
fn bad_flags_are_errors_naming_the_flag() {
    let err = |list: &[&str]| format!("{:#}", args(list).unwrap_err());
    assert!(err(&["--model", "rnn"]).contains("--model"));
    assert!(err(&["--estimators", "exact,bogus"]).contains("\"bogus\""));
    assert!(err(&["--estimators", "exact,exact"]).contains("twice"));
    assert!(err(&["--epochs", "x"]).contains("--epochs"));
    assert!(err(&["--epochs", "0"]).contains("--epochs"));
    assert!(err(&["--eps", "0.1,-1"]).contains("--eps"));
    assert!(err(&["--sigmas", "0.1,,0.2"]).contains("--sigmas"));
    assert!(err(&["--lr"]).contains("--lr"));
    assert!(err(&["--lr", "0"]).contains("> 0"));
    assert!(err(&["--lambda", "-1"]).contains("≥ 0"));
    assert_eq!(args(&["--seeds", "-1,2"]).unwrap().seeds, [-1, 2]);
    assert!(err(&["--frobnicate"]).contains("--frobnicate"));
    assert!(err(&["--digits", "a", "--mnist", "b"]).contains("cannot be used with"));
    let a = args(&["--model=cnn", "--seeds", "0,1,2", "--eps", "0, 0.1"]).unwrap();
    assert_eq!(a.models(), [ModelKind::Cnn]);
    assert_eq!(a.seeds, [0, 1, 2]);
    assert_eq!(a.eps, [0.0, 0.1]);
    let d = args(&[]).unwrap();
    assert_eq!(d.models(), [ModelKind::Mlp, ModelKind::Cnn]);
    assert_eq!(d.estimators, EstimatorArg::ALL);
    assert_eq!(
        (
            d.batch_size,
            d.lr,
            d.lambda,
            d.threads,
            d.epochs,
            d.pgd_steps
        ),
        (64, 1e-3, 0.01, 2, 30, 10)
    );
    assert_eq!(d.sigmas, [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]);
    assert_eq!(d.eps, [0.0, 0.02, 0.05, 0.1, 0.15, 0.2]);
    assert_eq!(d.seeds, [0]);
    assert_eq!(d.plot, Path::new("target/jacobian-reg.svg"));
    assert!(d.json.is_none() && d.digits.is_none() && d.mnist.is_none() && d.device.is_none());
}

#[test]
fn help_documents_every_flag() {
    Args::command().debug_assert();
    let help = Args::command().render_long_help().to_string();
    for flag in [
        "--model",
        "--estimators",
        "--seeds",
        "--epochs",
        "--batch-size",
        "--lr",
        "--lambda",
        "--threads",
        "--sigmas",
        "--eps",
        "--pgd-steps",
        "--json",
        "--plot",
        "--digits",
        "--mnist",
        "--device",
        "--help",
    ] {
        assert!(help.contains(flag), "{flag} in {help}");
    }
    assert!(help.contains("cuda:N or auto"), "{help}");
    assert!(
        help.contains("[default: none,exact,projections,hutchpp]"),
        "{help}"
    );
}

#[test]
fn missing_data_is_an_error_naming_the_path() {
    let dir = Path::new("/nonexistent/jacobian-reg-digits");
    let msg = format!("{:#}", digits(dir, Device::Cpu).err().unwrap());
    assert!(msg.contains("/nonexistent/jacobian-reg-digits"), "{msg}");
    assert!(msg.contains("train-images.npy"), "{msg}");
    let msg = format!("{:#}", mnist(dir, 10, Device::Cpu).err().unwrap());
    assert!(
        msg.contains("--mnist /nonexistent/jacobian-reg-digits"),
        "{msg}"
    );
}

#[test]
fn digits_files_have_the_spec_shapes() {
    let d = digits_cpu();
    assert_eq!(d.train_x.size(), [1437, 1, 8, 8]);
    assert_eq!(d.test_x.size(), [360, 1, 8, 8]);
    assert_eq!((d.train_y.size(), d.test_y.size()), (vec![1437], vec![360]));
    assert_eq!(d.train_x.max().double_value(&[]), 1.0);
    assert_eq!(d.train_x.min().double_value(&[]), 0.0);
}

/// `Σ_i ‖∂ logits_{·,i} / ∂x‖²` per sample by tch's own backward, one row at a time.
fn row_loop_penalty(logits: &Tensor, x: &Tensor) -> Tensor {
    let b = x.size()[0];
    let mut sum = Tensor::zeros([b], (Kind::Float, Device::Cpu));
    for i in 0..logits.size()[1] {
        let g = Tensor::run_backward(&[logits.select(1, i).sum(None)], &[x], true, false);
        sum += g[0]
            .square()
            .reshape([b, -1])
            .sum_dim_intlist(1, false, None);
    }
    sum
}

#[test]
fn exact_penalty_equals_the_row_loop() {
    let d = digits_cpu();
    for kind in [ModelKind::Mlp, ModelKind::Cnn] {
        tch::manual_seed(3);
        let net = Net::new(kind, d.side, Device::Cpu);
        let x = net
            .input(&d.test_x.narrow(0, 0, 16))
            .unwrap()
            .detach()
            .set_requires_grad(true);
        let logits = net.forward(&x);
        let exact = tch_jacobian::jacobian_penalty_per_sample(
            &logits,
            &x,
            &PenaltyOptions::default().estimator(&PenaltyEstimator::Exact),
        )
        .unwrap();
        let rows = row_loop_penalty(&logits, &x);
        assert_eq!(exact.size(), [16]);
        assert!(
            exact.allclose(&rows, 1e-5, 1e-7, false),
            "{kind:?}: {exact:?} vs {rows:?}"
        );
        // And the mean is what the training loss adds.
        let mean = jacobian_penalty(
            &logits,
            &x,
            &PenaltyOptions::default().estimator(&PenaltyEstimator::Exact),
        )
        .unwrap();
        assert!((mean.double_value(&[]) - rows.mean(None).double_value(&[])).abs() < 1e-5);
        // The evaluation's mean ‖J‖_F (per_sample_jacobian) agrees too.
        let jf = mean_jacobian_norm(&net, &x).unwrap();
        assert!((jf - rows.sqrt().mean(None).double_value(&[])).abs() < 1e-4);
    }
}

#[test]
fn mlp_learns_above_chance() {
    let d = digits_cpu();
    let cfg = Config {
        epochs: 4,
        batch_size: 64,
        lr: 1e-3,
        lambda: 0.01,
    };
    for est in [EstimatorArg::None, EstimatorArg::Exact] {
        let t = train(&d, ModelKind::Mlp, est, 0, &cfg, true).unwrap();
        let acc = accuracy(&t.net, &t.net.input(&d.test_x).unwrap(), &d.test_y).unwrap();
        // Chance is 0.1.
        assert!(acc > 0.6, "{est:?}: accuracy {acc} after 4 epochs");
        assert!(t.last_ce.is_finite() && t.last_ce < 2.0, "{}", t.last_ce);
        assert_eq!(t.epoch_ms.len(), 4);
    }
}

#[test]
fn short_run_of_every_model_and_estimator() {
    // Small batches: at this commit Hutch++ through the CNN's LayerNorm costs O(B²) per step
    // (the crate computes its JVPs from the whole batch's Jacobian, [10·B, 64·B]).
    let d = digits_cpu().subset(64, 100).unwrap();
    let a = args(&[
        "--epochs",
        "2",
        "--batch-size",
        "16",
        "--sigmas",
        "0,0.3",
        "--eps",
        "0,0.1",
        "--pgd-steps",
        "3",
        "--seeds",
        "5",
    ])
    .unwrap();
    let info = RunInfo {
        epochs: 2,
        threads: 2,
        device: "cpu".into(),
    };
    let mut lines = Vec::new();
    let records = train_all(&d, &a, true, |r| {
        lines.push(json_line(r, &info));
        Ok(())
    })
    .unwrap();
    assert_eq!(records.len(), 2 * 4);
    assert_eq!(lines.len(), records.len());
    for (r, line) in records.iter().zip(&lines) {
        let e = &r.eval;
        let what = format!("{} {}", r.model.name(), r.estimator.name());
        assert!(r.ms_per_epoch_mean > 0.0 && r.ms_per_epoch_min <= r.ms_per_epoch_mean);
        assert!((0.0..=1.0).contains(&e.clean_acc), "{what}");
        assert!(e.mean_jf.is_finite() && e.mean_jf > 0.0, "{what}");
        // No noise and no budget: the test images themselves.
        assert_eq!(e.noise[0], (0.0, e.clean_acc), "{what}");
        assert_eq!(e.fgsm[0], (0.0, e.clean_acc), "{what}");
        assert_eq!(e.pgd[0], (0.0, e.clean_acc), "{what}");
        for (_, acc) in e.noise.iter().chain(&e.fgsm).chain(&e.pgd) {
            assert!((0.0..=1.0).contains(acc), "{what}");
        }

        let json: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|err| panic!("{err}: {line}"));
        let get = |k: &str| json.get(k).unwrap_or_else(|| panic!("no {k}: {line}"));
        assert_eq!(get("impl").as_str(), Some("tch-jacobian"));
        assert_eq!(get("model").as_str(), Some(r.model.name()));
        assert_eq!(get("estimator").as_str(), Some(r.estimator.name()));
        assert_eq!(get("seed").as_f64(), Some(5.0));
        assert_eq!(get("epochs").as_f64(), Some(2.0));
        assert_eq!(get("threads").as_f64(), Some(2.0));
        assert_eq!(get("device").as_str(), Some("cpu"));
        assert_eq!(get("ms_per_epoch_mean").as_f64(), Some(r.ms_per_epoch_mean));
        assert_eq!(get("ms_per_epoch_min").as_f64(), Some(r.ms_per_epoch_min));
        assert_eq!(get("clean_acc").as_f64(), Some(e.clean_acc));
        assert_eq!(get("mean_jf").as_f64(), Some(e.mean_jf));
        let at = |grid: &str, key: &str| get(grid).get(key).and_then(|v| v.as_f64());
        assert_eq!(at("noise", "0.3"), Some(e.noise[1].1));
        assert_eq!(at("fgsm", "0"), Some(e.clean_acc));
        assert_eq!(at("pgd", "0.1"), Some(e.pgd[1].1));
        let keys = [
            "impl",
            "model",
            "estimator",
            "seed",
            "epochs",
            "threads",
            "device",
            "ms_per_epoch_mean",
            "ms_per_epoch_min",
            "clean_acc",
            "mean_jf",
            "noise",
            "fgsm",
            "pgd",
        ];
        // The keys, in the spec's order (serde_json's map sorts them: read their places).
        assert_eq!(
            json.as_object().map(|o| o.len()),
            Some(keys.len()),
            "{line}"
        );
        let places: Vec<usize> = keys
            .iter()
            .map(|k| {
                line.find(&format!("\"{k}\":"))
                    .unwrap_or_else(|| panic!("no {k}: {line}"))
            })
            .collect();
        assert!(places.windows(2).all(|w| w[0] < w[1]), "{line}");
    }
}
