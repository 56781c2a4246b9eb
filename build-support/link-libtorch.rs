//! build.rs of the crates that depend on tch-jacobian in this repository (cli, bench): the two
//! link lines build-notes.md asks every dependent for — an rpath to libtorch's lib folder and
//! `--no-as-needed -ltorch` (else `libtorch_cuda.so` is dropped, tch-rs #907) — from the folder
//! tch-jacobian re-exports as `DEP_TCH_JACOBIAN_LIBTORCH_LIB`.
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
