// build.rs of a crate that depends on tch-jacobian and builds binaries (this CLI; bench/ includes
// this file through build-support/link-libtorch.rs). The lines the README's Install section asks
// every such crate for, from the libtorch lib folder that tch-jacobian re-exports as
// `DEP_TCH_JACOBIAN_LIBTORCH_LIB`:
//
// * an rpath to it, so that the binaries run without `LD_LIBRARY_PATH`;
// * `--no-as-needed -ltorch`: else the linker's default `--as-needed` drops `libtorch.so`, and
//   with it `libtorch_cuda.so`, and `tch::Cuda::is_available()` is false on a GPU machine
//   (tch-rs #907). `--as-needed` is restored after it.
//
// GNU ld flags (Linux); nothing is emitted when tch-jacobian was built without libtorch's folder.
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_JACOBIAN_LIBTORCH_LIB");
    if let Ok(lib) = std::env::var("DEP_TCH_JACOBIAN_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-L{lib}");
        println!("cargo:rustc-link-arg=-ltorch");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}
