//! The `tch-jacobian` binary on the TorchScript fixtures (tests/gen-torchscript.py): the .npy it
//! writes against PyTorch's Jacobians for every strategy, and one test per bad input — each a
//! non-zero exit with a single line on stderr naming the problem, never a panic.
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

use tch::{Kind, Tensor};
use tch_jacobian::testing::Tolerance;

/// The binary under test: `TCH_JACOBIAN_BIN` when set (a bundle run on another machine, see
/// scripts/gpu-run), else the one cargo built.
fn bin() -> String {
    std::env::var("TCH_JACOBIAN_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_tch-jacobian").into())
}

/// `tests/data/ts/<name>` under `TCH_JACOBIAN_ROOT` when set, else the repository's root (this
/// crate's parent folder).
fn data(name: &str) -> String {
    let root = std::env::var("TCH_JACOBIAN_ROOT")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/..").into());
    format!("{root}/tests/data/ts/{name}")
}

/// Float64 results against float64 PyTorch (the same math, another summation order).
fn f64_tol() -> Tolerance {
    Tolerance::new(1e-10, 1e-12)
}

fn fixture(name: &str) -> Tensor {
    Tensor::read_npy(data(&format!("{name}.npy")))
        .unwrap_or_else(|e| panic!("cannot read fixture {name} ({e}); run scripts/gen-fixtures"))
}

/// A fresh scratch folder per test, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(test: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("tch-jacobian-cli-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs the binary in `cwd` with `args`.
fn run_in(cwd: &Path, args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("cannot start the tch-jacobian binary")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Asserts success and returns stdout.
#[track_caller]
fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Runs `--model <model> --input <input> --device cpu --output <scratch>/j.npy <extra>` and
/// returns J and stdout.
fn jacobian(test: &str, model: &str, input: &str, extra: &[&str]) -> (Tensor, String) {
    let dir = Scratch::new(test);
    let j_path = dir.path("j.npy");
    let (m, i) = (data(model), data(input));
    let mut args = vec![
        "--model",
        &m,
        "--input",
        &i,
        "--device",
        "cpu",
        "--output",
        j_path.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let stdout = ok(&run_in(&dir.0, &args));
    let j = Tensor::read_npy(&j_path).expect("J written");
    (j, stdout)
}

/// The bad-input contract: non-zero exit, exactly one line on stderr starting with
/// `tch-jacobian: error:` and containing every needle, no panic, nothing on stdout.
#[track_caller]
fn fails(args: &[&str], needles: &[&str]) {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = Scratch::new(&format!("fail-{}", N.fetch_add(1, Ordering::Relaxed)));
    let out = run_in(&dir.0, args);
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "expected a failure for {args:?}");
    assert_eq!(
        out.status.code(),
        Some(1),
        "exit status for {args:?}: {stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "one line on stderr: {stderr:?}");
    assert!(
        stderr.starts_with("tch-jacobian: error: "),
        "prefix: {stderr:?}"
    );
    for n in needles {
        assert!(
            stderr.contains(n),
            "stderr {stderr:?} does not contain {n:?}"
        );
    }
    for bad in [
        "panicked",
        "internal error",
        "RUST_BACKTRACE",
        "Exception raised from",
    ] {
        assert!(!stderr.contains(bad), "{bad:?} in stderr: {stderr:?}");
    }
    assert!(
        text(&out.stdout).is_empty(),
        "stdout: {}",
        text(&out.stdout)
    );
}

const STRATEGIES: [&[&str]; 7] = [
    &["--strategy", "auto"],
    &["--strategy", "row-loop"],
    &["--strategy", "batched", "--chunk-size", "3"],
    &["--strategy", "forward"],
    &["--strategy", "vectorized"],
    &["--strategy", "vectorized", "--chunk-size", "3"],
    &["--strategy", "vectorized-forward", "--chunk-size", "2"],
];

/// The given strategies, plain and `--batch`, against `<case>_j` and `<case>_bj`.
fn check_case(test: &str, model: &str, case: &str, strategies: &[&[&str]], extra: &[&str]) {
    for s in strategies {
        let args: Vec<&str> = s.iter().chain(extra).copied().collect();
        let (j, stdout) = jacobian(test, model, &format!("{case}_x.npy"), &args);
        f64_tol()
            .check(&j, &fixture(&format!("{case}_j")))
            .unwrap_or_else(|e| panic!("{case} {args:?}: {e}"));
        assert!(stdout.contains("device    Cpu"), "{stdout}");
        let mut batch_args = args.clone();
        batch_args.push("--batch");
        let (j, _) = jacobian(test, model, &format!("{case}_bx.npy"), &batch_args);
        f64_tol()
            .check(&j, &fixture(&format!("{case}_bj")))
            .unwrap_or_else(|e| panic!("{case} {batch_args:?}: {e}"));
    }
}

#[test]
fn mlp_every_strategy_matches_pytorch() {
    check_case("mlp", "mlp_tanh.pt", "mlp_tanh", &STRATEGIES, &[]);
}

#[test]
fn conv_every_strategy_matches_pytorch() {
    // Each run starts libtorch (1-2 s); tests/module.rs covers every strategy on this model.
    let some = [STRATEGIES[0], STRATEGIES[1], STRATEGIES[2], STRATEGIES[5]];
    check_case("conv", "conv.pt", "conv", &some, &[]);
}

#[test]
fn tall_matrix_output() {
    // 12 outputs, 2 inputs: auto goes column-wise — one batched pass over the input elements
    // (forward) with the batched engine, vectorized-forward without it.
    let strategies: [&[&str]; 3] = [&["-s", "auto"], &["-s", "row-loop"], &["-s", "forward"]];
    check_case("tall", "tall.pt", "tall", &strategies, &[]);
    let (j, stdout) = jacobian("tall-summary", "tall.pt", "tall_x.npy", &[]);
    assert_eq!(j.size(), [3, 4, 2]);
    let expected = if tch_jacobian::native::available() {
        "strategy  auto: forward"
    } else {
        "strategy  auto: vectorized-forward"
    };
    assert!(stdout.contains(expected), "{stdout}");
}

#[test]
fn tuple_outputs_by_index() {
    check_case(
        "tuple0",
        "tuple_out.pt",
        "tuple_out0",
        &STRATEGIES[..1],
        &["--output-index", "0"],
    );
    check_case(
        "tuple1",
        "tuple_out.pt",
        "tuple_out1",
        &STRATEGIES[1..2],
        &["-k", "1"],
    );
}

#[test]
fn summary_on_stdout() {
    let (j, stdout) = jacobian("summary", "mlp_tanh.pt", "mlp_tanh_x.npy", &[]);
    let expected = fixture("mlp_tanh_j");
    let fro = expected.square().sum(Kind::Double).sqrt().double_value(&[]);
    assert_eq!(j.size(), [4, 5]);
    assert_eq!(j.kind(), Kind::Double);
    let lines: Vec<&str> = stdout.lines().collect();
    let field = |name: &str| {
        lines
            .iter()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name:?} line in {stdout}"))
            .trim()
    };
    assert!(
        field("input").ends_with("mlp_tanh_x.npy [5] Double"),
        "{stdout}"
    );
    assert_eq!(field("output"), "[4] Double");
    assert!(
        field("jacobian").starts_with("[4, 5] Double -> "),
        "{stdout}"
    );
    let printed: f64 = field("‖J‖_F").parse().unwrap();
    assert!((printed - fro).abs() <= 1e-8 * fro, "{printed} vs {fro}");
    assert_eq!(field("device"), "Cpu");
    assert!(field("strategy").starts_with("auto"), "{stdout}");
    assert!(field("time").contains("loading the model"), "{stdout}");
}

#[test]
fn default_output_in_the_current_directory() {
    let dir = Scratch::new("default-output");
    let (m, i) = (data("conv.pt"), data("conv_x.npy"));
    ok(&run_in(&dir.0, &["-m", &m, "-i", &i, "-d", "cpu"]));
    let j = Tensor::read_npy(dir.path("jacobian.npy")).unwrap();
    f64_tol().check(&j, &fixture("conv_j")).unwrap();
}

#[test]
fn dtype_converts_model_and_input() {
    // f32: model and input in float32; J in float32, close to PyTorch's float64 J.
    let (j, stdout) = jacobian(
        "dtype32",
        "mlp_tanh.pt",
        "mlp_tanh_x.npy",
        &["--dtype", "f32"],
    );
    assert_eq!(j.kind(), Kind::Float);
    // PyTorch's float64 J rounded to float32 on purpose; the model ran in float32, so 1e-4.
    Tolerance::new(1e-4, 1e-6)
        .check(&j, &fixture("mlp_tanh_j").to_kind(Kind::Float))
        .unwrap();
    assert!(
        stdout.contains("[5] Float (converted from Double)"),
        "{stdout}"
    );
    // A float32 input for the float64 model works with --dtype f64; so does an integer one.
    let (j, _) = jacobian("dtype64", "mlp_tanh.pt", "f32_x.npy", &["--dtype", "f64"]);
    assert_eq!((j.size(), j.kind()), (vec![4, 5], Kind::Double));
    let (j, _) = jacobian("dtype-int", "mlp_tanh.pt", "int_x.npy", &["--dtype", "f64"]);
    assert_eq!((j.size(), j.kind()), (vec![4, 5], Kind::Double));
}

#[test]
fn help_has_an_example() {
    let out = run_in(Path::new("/"), &["--help"]);
    let stdout = ok(&out);
    assert!(stdout.contains("Examples:"), "{stdout}");
    assert!(
        stdout.contains("tch-jacobian --model m.pt --input x.npy"),
        "{stdout}"
    );
    assert!(
        stdout.contains("only load models from sources you trust"),
        "{stdout}"
    );
    for flag in [
        "--batch",
        "--strategy",
        "--chunk-size",
        "--device",
        "--dtype",
        "--output",
        "--output-index",
    ] {
        assert!(stdout.contains(flag), "{flag} in {stdout}");
    }
}

// ---- Bad input: one line on stderr, non-zero exit, no panic ------------------------------------

fn args<'a>(model: &'a str, input: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![
        "--model",
        model,
        "--input",
        input,
        "--device",
        "cpu",
        "-o",
        "/dev/null",
    ];
    v.extend_from_slice(extra);
    v
}

#[test]
fn missing_model_file() {
    let i = data("mlp_tanh_x.npy");
    fails(
        &args("no/such/model.pt", &i, &[]),
        &[
            "cannot read TorchScript model no/such/model.pt",
            "No such file",
        ],
    );
}

#[test]
fn missing_input_file() {
    let m = data("mlp_tanh.pt");
    fails(
        &args(&m, "no/such/x.npy", &[]),
        &["cannot read input no/such/x.npy", "No such file"],
    );
}

#[test]
fn unreadable_files() {
    let (m, i, dir) = (data("mlp_tanh.pt"), data("mlp_tanh_x.npy"), data(""));
    fails(
        &args(&dir, &i, &[]),
        &["cannot read TorchScript model", "directory"],
    );
    fails(&args(&m, &dir, &[]), &["cannot read input", "directory"]);
}

#[test]
fn model_file_that_is_not_torchscript() {
    let (m, i) = (data("mlp_tanh_x.npy"), data("mlp_tanh_x.npy"));
    fails(
        &args(&m, &i, &[]),
        &["is not a TorchScript model", "PytorchStreamReader"],
    );
}

#[test]
fn input_that_is_not_npy() {
    let (m, i) = (data("mlp_tanh.pt"), data("mlp_tanh.pt"));
    fails(&args(&m, &i, &[]), &["is not a .npy file"]);
    // A .npy cut short: its header announces more data than there is.
    let dir = Scratch::new("truncated");
    let bytes = std::fs::read(data("mlp_tanh_x.npy")).unwrap();
    let cut = dir.path("cut.npy");
    std::fs::write(&cut, &bytes[..bytes.len() - 8]).unwrap();
    fails(
        &args(&m, cut.to_str().unwrap(), &[]),
        &["is not a .npy file", "truncated data"],
    );
}

#[test]
fn input_shape_the_model_rejects() {
    let (m, i) = (data("mlp_tanh.pt"), data("bad_shape_x.npy"));
    for s in &STRATEGIES[..2] {
        fails(
            &args(&m, &i, s),
            &[
                "the model rejected an input of shape [3]",
                "mat1 and mat2 shapes cannot be multiplied (1x3 and 5x8)",
            ],
        );
    }
}

#[test]
fn input_dtype_the_model_rejects() {
    let (m, i) = (data("mlp_tanh.pt"), data("f32_x.npy"));
    fails(
        &args(&m, &i, &[]),
        &[
            "the model rejected an input of shape [5] (Float",
            "dtype",
            "pass --dtype f32 or --dtype f64",
        ],
    );
}

#[test]
fn integer_input() {
    let (m, i) = (data("mlp_tanh.pt"), data("int_x.npy"));
    fails(
        &args(&m, &i, &[]),
        &["has dtype Int64", "floating-point", "--dtype"],
    );
}

#[test]
fn model_without_tensor_output() {
    let i = data("mlp_tanh_x.npy");
    let m = data("returns_str.pt");
    fails(
        &args(&m, &i, &[]),
        &["the model returns str", "not a tensor"],
    );
    let m = data("returns_int.pt");
    fails(
        &args(&m, &i, &["--batch"]),
        &["the model returns int", "not a tensor"],
    );
    let m = data("tuple_out.pt");
    fails(
        &args(&m, &i, &["--output-index", "2"]),
        &["output 2 of the model is int 1, not a tensor"],
    );
}

#[test]
fn output_index_out_of_range() {
    let i = data("mlp_tanh_x.npy");
    let m = data("tuple_out.pt");
    fails(
        &args(&m, &i, &["--output-index", "7"]),
        &["output index 7 is out of range", "indices 0 to 2"],
    );
    fails(
        &args(&m, &i, &[]),
        &["returns 3 values", "output index (0 to 2)"],
    );
    let m = data("mlp_tanh.pt");
    fails(
        &args(&m, &i, &["-k", "1"]),
        &["output index 1 is out of range", "single tensor"],
    );
}

#[test]
fn cuda_when_unavailable() {
    let (m, i) = (data("mlp_tanh.pt"), data("mlp_tanh_x.npy"));
    let mut a = args(&m, &i, &[]);
    a[5] = "cuda";
    if tch::Cuda::is_available() {
        ok(&run_in(Path::new("/"), &a));
    } else {
        fails(&a, &["--device cuda", "CUDA is not available"]);
    }
}

#[test]
fn output_that_cannot_be_written() {
    let (m, i) = (data("mlp_tanh.pt"), data("mlp_tanh_x.npy"));
    let mut a = args(&m, &i, &[]);
    a[7] = "/no/such/dir/j.npy";
    fails(&a, &["cannot write J to /no/such/dir/j.npy"]);
}

#[test]
fn bad_options() {
    let (m, i) = (data("mlp_tanh.pt"), data("mlp_tanh_x.npy"));
    fails(
        &args(&m, &i, &["--chunk-size", "0"]),
        &["--chunk-size must be at least 1"],
    );
    fails(
        &args(&m, &i, &["--strategy", "forward", "--chunk-size", "2"]),
        &["--chunk-size applies to --strategy batched, vectorized or vectorized-forward, not forward"],
    );
    // [5] -> [4] has no batch dimension.
    fails(&args(&m, &i, &["--batch"]), &["--batch", "[5]", "[4]"]);
}

#[test]
fn reports_the_vmap_fallback() {
    // The CLI depends on tch-jacobian with its default features: the engine is always built.
    assert!(
        tch_jacobian::native::available(),
        "{}",
        tch_jacobian::native::build_status()
    );
    let (j, stdout) = jacobian(
        "fallback",
        "transformer.pt",
        "transformer_x.npy",
        &["--strategy", "batched"],
    );
    f64_tol().check(&j, &fixture("transformer_j")).unwrap();
    assert!(
        stdout.contains(
            "fallback  aten::_scaled_dot_product_flash_attention_for_cpu_backward has no vmap batching rule"
        ),
        "{stdout}"
    );
}
