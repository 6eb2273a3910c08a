//! Build script shared by every board crate (`build = "../link.rs"`): links the firmware image
//! with the project's linker script.
use std::path::PathBuf;

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("../..");
    let script = root.join("linker.ld").canonicalize().expect("linker.ld at the project root");
    println!("cargo:rerun-if-changed={}", script.display());
    if std::env::var("TARGET").unwrap().starts_with("aarch64") {
        println!("cargo:rustc-link-arg-bins=-T{}", script.display());
    }
}
