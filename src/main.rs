//! `tch-jacobian` command-line tool (placeholder until the TorchScript CLI lands).
fn main() {
    eprintln!("tch-jacobian: the TorchScript command line is not implemented yet");
    std::process::exit(2);
}
