//! Builds the container-side waiter (`waiter/main.rs`) as a static executable with the same
//! rustc, so the weft binary can carry it (see `waiter::BINARY`). It has no dependencies and
//! links glibc statically (`crt-static`): a container image need not have any libc.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=waiter/main.rs");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let target = std::env::var("TARGET").expect("cargo sets TARGET");
    let exe = out.join("weft-wait");
    let status = Command::new(&rustc)
        .args([
            "--edition",
            "2021",
            "--crate-type",
            "bin",
            "--crate-name",
            "weft_wait",
        ])
        .args(["--target", &target])
        .args([
            "-C",
            "opt-level=s",
            "-C",
            "panic=abort",
            "-C",
            "strip=symbols",
        ])
        .args(["-C", "target-feature=+crt-static", "-C", "debuginfo=0"])
        .arg("-o")
        .arg(&exe)
        .arg("waiter/main.rs")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .status()
        .expect("running rustc for the waiter");
    assert!(
        status.success(),
        "building the static waiter failed ({status}); it needs the static C library (libc6-dev)"
    );
}
