//! Builds the XDP object (nat-ebpf) with the nightly toolchain and
//! bpf-linker, for `natctl` to embed.
//!
//! Written by hand rather than with aya-build because aya-build puts the eBPF
//! build under OUT_DIR, which differs for every profile and for clippy: on a
//! two-core machine that meant a full `-Z build-std=core` rebuild for each of
//! `cargo build`, `cargo test` and `cargo clippy`. One shared target directory
//! (`target/ebpf`) builds it once.
use std::{env, path::PathBuf, process::Command};

use anyhow::{Context, bail};

const TOOLCHAIN: &str = "nightly";

fn main() -> anyhow::Result<()> {
    // cargo-fuzz builds with `--cfg fuzzing`. The fuzz targets (nat-ctl/fuzz)
    // only exercise the UPnP parsers and never load the datapath, so the
    // nightly `-Z build-std` eBPF build would only cost minutes: embed an
    // empty placeholder object instead.
    if env::var_os("CARGO_CFG_FUZZING").is_some() {
        println!("cargo:rerun-if-changed=build.rs");
        let placeholder = PathBuf::from(env::var("OUT_DIR")?).join("nat-ebpf-placeholder.o");
        std::fs::write(&placeholder, b"")
            .with_context(|| format!("writing {}", placeholder.display()))?;
        println!("cargo:rustc-env=NAT_EBPF_OBJECT={}", placeholder.display());
        return Ok(());
    }

    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let workspace = manifest_dir.parent().context("nat-ctl has no parent")?;
    println!(
        "cargo:rerun-if-changed={}",
        workspace.join("nat-ebpf").display()
    );
    println!(
        "cargo:rerun-if-changed={}",
        workspace.join("nat-common").display()
    );
    println!("cargo:rerun-if-env-changed=CARGO_TARGET_DIR");

    let target_root = env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target"));
    let target_dir = target_root.join("ebpf");
    let arch = env::var("CARGO_CFG_TARGET_ARCH")?;
    let target = match env::var("CARGO_CFG_TARGET_ENDIAN")?.as_str() {
        "big" => "bpfeb-unknown-none",
        _ => "bpfel-unknown-none",
    };

    let rustflags = [
        format!("--cfg=bpf_target_arch=\"{arch}\""),
        "-Cdebuginfo=2".to_owned(),
        "-Clink-arg=--btf".to_owned(),
    ]
    .join("\x1f");

    let mut cmd = Command::new("rustup");
    cmd.args([
        "run",
        TOOLCHAIN,
        "cargo",
        "build",
        "--package",
        "nat-ebpf",
        "--bins",
    ])
    .args(["--release", "--target", target, "-Z", "build-std=core"])
    .arg("--target-dir")
    .arg(&target_dir)
    .current_dir(workspace)
    .env("CARGO_ENCODED_RUSTFLAGS", rustflags);
    // Whatever the outer cargo (or clippy) set for the host build must not
    // leak into the eBPF build.
    for key in [
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "RUSTUP_TOOLCHAIN",
        "CARGO",
    ] {
        cmd.env_remove(key);
    }
    let status = cmd.status().with_context(|| {
        format!("could not run `rustup run {TOOLCHAIN} cargo`: run `cargo xtask setup` first")
    })?;
    if !status.success() {
        bail!(
            "building the eBPF object failed ({status}). If the nightly toolchain, its rust-src \
             or bpf-linker is missing, `cargo xtask setup` installs them."
        );
    }
    let object = target_dir.join(target).join("release").join("nat");
    println!("cargo:rustc-env=NAT_EBPF_OBJECT={}", object.display());
    Ok(())
}
