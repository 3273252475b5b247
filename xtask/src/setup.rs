//! `cargo xtask setup`: brings a fresh Debian machine to the point where the
//! workspace builds and its tests run. Every step checks first and is skipped
//! when already satisfied, so running it again is quick.

use std::{
    env, fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::cmd;

/// The toolchain that builds the eBPF object (`-Z build-std=core`).
const NIGHTLY: &str = "nightly";

/// Tools the tests and the demo lab call, as Debian packages.
const DEBIAN_PACKAGES: &[&str] = &[
    "iproute2",
    "iputils-ping",
    "netcat-openbsd",
    "tcpdump",
    "ethtool",
    "bpftool",
    // systemd-analyze, which checks the unit `cargo xtask install` writes.
    "systemd",
    "nftables",
    "conntrack",
    "iperf3",
    "miniupnpc",
    // NAT-PMP clients of the end-to-end tests (tests/tests/natpmp.rs).
    "natpmpc",
    "python3-libtorrent",
    // The reference IGD the benchmarks compare with; never started as a
    // service (see `debian_packages`).
    "miniupnpd",
    "miniupnpd-nftables",
    // coturn's turnserver (RFC 5780 and RFC 3489 STUN) and
    // turnutils_natdiscovery: the NAT type tests' server and client
    // (tests/tests/stun_types.rs) and the STUN server of the tests behind a
    // second NAT (tests/tests/upnp.rs); started only inside their
    // namespaces, never as a service.
    "coturn",
    // The venv of the PyPI tools below, made with Debian's python3.
    "python3-venv",
    // The admin page's browser test (tests/tests/web.rs): headless
    // Chromium driven over WebDriver.
    "chromium",
    "chromium-driver",
    // `script`, the terminal `natctl passwd` is tested on.
    "bsdutils",
];

/// Tools the tests call that Debian does not package, from PyPI, into a
/// venv at `target/python` (Debian's python3 refuses a system-wide pip
/// install, PEP 668): the classic RFC 3489 STUN client of
/// tests/tests/stun_types.rs.
const PYPI_PACKAGES: &[(&str, &str)] = &[("pystun3", "2.0.0")];

/// Where the tests find the PyPI tools: `target/python/bin`.
const PYTHON_VENV: &str = "python";

const BPF_LINKER_VERSION: &str = "0.13.0";

const BPFFS: &str = "/sys/fs/bpf";

pub fn run() -> Result<()> {
    let root = cmd::is_root()?;
    nightly_toolchain()?;
    debian_packages(root)?;
    python_tools()?;
    rust_src()?;
    bpf_linker()?;
    cargo_fuzz()?;
    bpffs(root)?;
    Ok(())
}

/// The PyPI tools, each pinned, in the venv under the target directory.
fn python_tools() -> Result<()> {
    let venv = cmd::target_dir()?.join(PYTHON_VENV);
    let pip = venv.join("bin").join("pip");
    let missing: Vec<String> = PYPI_PACKAGES
        .iter()
        .filter(|(name, version)| {
            let shown = Command::new(&pip).args(["show", name]).output();
            !shown.is_ok_and(|out| {
                out.status.success()
                    && String::from_utf8_lossy(&out.stdout)
                        .lines()
                        .any(|line| line == format!("Version: {version}"))
            })
        })
        .map(|(name, version)| format!("{name}=={version}"))
        .collect();
    if missing.is_empty() {
        step("PyPI tools", "all present");
        return Ok(());
    }
    step(
        "PyPI tools",
        &format!("installing {} into {}", missing.join(" "), venv.display()),
    );
    if !pip.is_file() {
        // Debian's interpreter, whatever else is first on PATH: its venv
        // module is the python3-venv package above.
        cmd::run(
            Command::new("/usr/bin/python3")
                .args(["-m", "venv"])
                .arg(&venv),
        )
        .context("making the venv for the PyPI tools")?;
    }
    cmd::run(
        Command::new(&pip)
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .args(&missing),
    )
    .context("installing the PyPI tools")
}

/// What building natctl needs (`cargo xtask install`), no more.
pub fn build_tools() -> Result<()> {
    nightly_toolchain()?;
    rust_src()?;
    bpf_linker()
}

/// What `cargo xtask fuzz` needs, no more: it runs without root.
pub fn fuzz_tools() -> Result<()> {
    nightly_toolchain()?;
    cargo_fuzz()
}

fn step(name: &str, outcome: &str) {
    println!("xtask: setup: {name}: {outcome}");
}

/// rustup and the nightly toolchain cannot be installed from here (no other
/// toolchain can be fetched on the machines this targets), only reported.
fn nightly_toolchain() -> Result<()> {
    let Some(toolchains) = cmd::probe(Command::new("rustup").args(["toolchain", "list"])) else {
        bail!("rustup is missing: install it from https://rustup.rs");
    };
    let installed = toolchains
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .any(|name| name == NIGHTLY || name.starts_with(&format!("{NIGHTLY}-")));
    if !installed {
        bail!("the {NIGHTLY} toolchain is missing: rustup toolchain install {NIGHTLY}");
    }
    let version = cmd::probe(Command::new("rustup").args(["run", NIGHTLY, "rustc", "--version"]))
        .with_context(|| {
        format!("the {NIGHTLY} toolchain has no working rustc: rustup toolchain install {NIGHTLY}")
    })?;
    step(
        "nightly toolchain",
        &format!("present ({})", version.trim()),
    );
    Ok(())
}

fn debian_packages(root: bool) -> Result<()> {
    let mut missing = Vec::new();
    for &package in DEBIAN_PACKAGES {
        let status = Command::new("dpkg-query")
            .args(["-W", "-f=${Status}", package])
            .output()
            .with_context(|| {
                format!(
                    "dpkg-query is missing: this step supports Debian only; install by hand: {}",
                    DEBIAN_PACKAGES.join(" ")
                )
            })?;
        if String::from_utf8_lossy(&status.stdout).trim() != "install ok installed" {
            missing.push(package);
        }
    }
    if missing.is_empty() {
        step("Debian packages", "all present");
        return Ok(());
    }
    let list = missing.join(" ");
    if !root {
        bail!(
            "missing Debian packages: {list}; as root run: apt-get update && apt-get install -y {list}"
        );
    }
    step("Debian packages", &format!("installing {list}"));
    if missing
        .iter()
        .any(|package| package.starts_with("miniupnpd"))
    {
        // The benchmarks run miniupnpd in a namespace of their own; the
        // package must not start it on this machine's interfaces.
        let mut preseed = Command::new("debconf-set-selections");
        preseed.stdin(std::process::Stdio::piped());
        let mut child = preseed.spawn().context("debconf-set-selections")?;
        std::io::Write::write_all(
            child.stdin.as_mut().context("stdin")?,
            b"miniupnpd miniupnpd/start_daemon boolean false\n",
        )?;
        drop(child.stdin.take());
        if !child.wait()?.success() {
            bail!("debconf-set-selections failed");
        }
    }
    cmd::run(Command::new("apt-get").arg("update")).context("apt-get update")?;
    cmd::run(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y"])
            .args(&missing),
    )
    .context("installing Debian packages")?;
    if missing.contains(&"coturn") {
        // The package enables a TURN server on this machine's addresses
        // where systemd runs; the tests start their own inside their
        // namespaces. Where systemd is not running this fails, harmlessly.
        let _ = cmd::probe(Command::new("systemctl").args(["disable", "--now", "coturn"]));
    }
    Ok(())
}

/// `-Z build-std=core` needs the standard library's source.
fn rust_src() -> Result<()> {
    let components = cmd::probe(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        NIGHTLY,
        "--installed",
    ]))
    .context("could not list the nightly toolchain's components")?;
    if components
        .lines()
        .any(|line| line.trim() == "rust-src" || line.starts_with("rust-src-"))
    {
        step("nightly rust-src", "present");
        return Ok(());
    }
    step("nightly rust-src", "installing");
    cmd::run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", NIGHTLY]))
}

/// bpf-linker's version as the build sees it: `rustup run nightly` puts the
/// nightly's lib directory, where its libLLVM lives, on the loader path.
fn bpf_linker_version() -> Option<String> {
    cmd::probe(Command::new("rustup").args(["run", NIGHTLY, "bpf-linker", "--version"]))
        .map(|out| out.trim().to_owned())
}

fn bpf_linker_ok(version: Option<&str>) -> bool {
    version.is_some_and(|v| v.split_whitespace().any(|word| word == BPF_LINKER_VERSION))
}

/// bpf-linker links against the nightly's own LLVM, so the two always agree on
/// the bitcode the nightly emits.
fn bpf_linker() -> Result<()> {
    let name = format!("bpf-linker {BPF_LINKER_VERSION}");
    let found = bpf_linker_version();
    if bpf_linker_ok(found.as_deref()) {
        step(&name, "present");
        return Ok(());
    }
    let (prefix, llvm_major) = llvm_prefix()?;
    step(
        &name,
        &format!(
            "building against the nightly's LLVM {llvm_major} (about 2 minutes; found: {})",
            found.as_deref().unwrap_or("none")
        ),
    );
    let install = |locked: bool| {
        let mut install = Command::new("cargo");
        install
            .env("LLVM_PREFIX", &prefix)
            .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
            .args(locked.then_some("--locked"))
            // Reached only when the installed one does not run (e.g. the
            // nightly's libLLVM changed), so replace it.
            .arg("--force")
            .args(["--no-default-features", "--features"])
            .arg(format!("llvm-{llvm_major}"));
        install
    };
    // The published lock file may pin crates that need a newer rustc than
    // this machine's; cargo then resolves compatible versions itself.
    if cmd::run(&mut install(true)).is_err() {
        println!("xtask: setup: {name}: retrying without --locked");
        cmd::run(&mut install(false)).context("building bpf-linker")?;
    }
    let after = bpf_linker_version();
    if !bpf_linker_ok(after.as_deref()) {
        bail!(
            "bpf-linker was installed but `rustup run {NIGHTLY} bpf-linker --version` reports {}; \
             is ~/.cargo/bin on PATH?",
            after.as_deref().unwrap_or("nothing (it did not run)")
        );
    }
    step(&name, "installed");
    Ok(())
}

/// cargo-fuzz runs the fuzz targets in nat-ctl/fuzz (`cargo xtask fuzz`,
/// also part of `cargo xtask test`).
fn cargo_fuzz() -> Result<()> {
    let version = || cmd::probe(Command::new("cargo").args(["fuzz", "--version"]));
    if let Some(found) = version() {
        step("cargo-fuzz", &format!("present ({})", found.trim()));
        return Ok(());
    }
    step("cargo-fuzz", "installing (about 90 seconds)");
    cmd::run(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))
        .context("installing cargo-fuzz")?;
    if version().is_none() {
        bail!(
            "cargo-fuzz was installed but `cargo fuzz --version` does not run; is ~/.cargo/bin on PATH?"
        );
    }
    step("cargo-fuzz", "installed");
    Ok(())
}

/// A directory whose `lib/libLLVM.so` is the nightly's libLLVM, as
/// bpf-linker's build expects in LLVM_PREFIX; returns it with LLVM's major
/// version. Kept in a stable place: the symlink is read at build time only.
fn llvm_prefix() -> Result<(PathBuf, String)> {
    let sysroot =
        cmd::probe(Command::new("rustup").args(["run", NIGHTLY, "rustc", "--print", "sysroot"]))
            .context("could not find the nightly's sysroot")?;
    let lib = Path::new(sysroot.trim()).join("lib");
    let libllvm = nightly_libllvm(&lib)?;
    let file_name = libllvm
        .file_name()
        .and_then(|name| name.to_str())
        .context("libLLVM file name is not UTF-8")?;
    let llvm_major = llvm_major(file_name)
        .with_context(|| format!("no LLVM version in the file name {file_name}"))?;

    let home = env::var_os("HOME").context("HOME is not set")?;
    let prefix = PathBuf::from(home).join(".local/share/nat-router/llvm");
    let link = prefix.join("lib/libLLVM.so");
    if fs::read_link(&link).ok().as_deref() != Some(libllvm.as_path()) {
        fs::create_dir_all(prefix.join("lib"))
            .with_context(|| format!("creating {}", prefix.join("lib").display()))?;
        match fs::remove_file(&link) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(err).with_context(|| format!("removing {}", link.display())),
        }
        symlink(&libllvm, &link)
            .with_context(|| format!("linking {} -> {}", link.display(), libllvm.display()))?;
        println!("xtask: linked {} -> {}", link.display(), libllvm.display());
    }
    Ok((prefix, llvm_major))
}

/// The nightly's `lib/libLLVM.so.<version>` (its name carries LLVM's and
/// rustc's versions, which change with every nightly).
fn nightly_libllvm(lib: &Path) -> Result<PathBuf> {
    let mut found = Vec::new();
    for entry in fs::read_dir(lib).with_context(|| format!("reading {}", lib.display()))? {
        let entry = entry?;
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with("libLLVM.so.")
        {
            found.push(entry.path());
        }
    }
    found.sort();
    match found.as_slice() {
        [one] => Ok(one.clone()),
        [] => bail!(
            "the {NIGHTLY} toolchain has no {}/libLLVM.so.*, which bpf-linker needs: \
             rustup toolchain install {NIGHTLY}",
            lib.display()
        ),
        many => bail!(
            "several libLLVM.so.* in {}, cannot tell which to use: {many:?}",
            lib.display()
        ),
    }
}

/// "libLLVM.so.22.1-rust-1.97.0-nightly" -> "22".
fn llvm_major(file_name: &str) -> Option<String> {
    let version = file_name.strip_prefix("libLLVM.so.")?;
    let major: String = version.chars().take_while(char::is_ascii_digit).collect();
    (!major.is_empty()).then_some(major)
}

/// natctl pins its maps under /sys/fs/bpf, which a fresh machine has not
/// mounted.
fn bpffs(root: bool) -> Result<()> {
    let mounts = fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    let mounted = mounts.lines().any(|line| {
        let fields: Vec<_> = line.split_whitespace().collect();
        fields.get(1) == Some(&BPFFS) && fields.get(2) == Some(&"bpf")
    });
    if mounted {
        step(&format!("bpffs at {BPFFS}"), "mounted");
        return Ok(());
    }
    if !root {
        bail!("bpffs is not mounted at {BPFFS}; as root run: mount -t bpf bpf {BPFFS}");
    }
    step(&format!("bpffs at {BPFFS}"), "mounting");
    cmd::run(Command::new("mount").args(["-t", "bpf", "bpf", BPFFS]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llvm_major_from_nightly_file_name() {
        assert_eq!(
            llvm_major("libLLVM.so.22.1-rust-1.97.0-nightly").as_deref(),
            Some("22")
        );
        assert_eq!(llvm_major("libLLVM.so.").as_deref(), None);
        assert_eq!(llvm_major("libLLVM-22.so").as_deref(), None);
    }

    #[test]
    fn bpf_linker_version_match() {
        assert!(bpf_linker_ok(Some("bpf-linker 0.13.0")));
        assert!(!bpf_linker_ok(Some("bpf-linker 0.13.01")));
        assert!(!bpf_linker_ok(Some("bpf-linker 0.12.0")));
        assert!(!bpf_linker_ok(None));
    }
}
