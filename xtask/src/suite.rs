//! `cargo xtask test`: the whole check the CI runs (.ci/run).

use anyhow::{Result, bail};

use crate::{cmd, setup};

pub fn run(test_args: &[String]) -> Result<()> {
    setup::run()?;
    if !cmd::is_root()? {
        println!("xtask: note: not root; the tests that create netns and attach XDP need root");
    }
    let mut test = vec!["test"];
    if !test_args.is_empty() {
        test.push("--");
        test.extend(test_args.iter().map(String::as_str));
    }
    let steps: [(&str, Vec<&str>); 4] = [
        ("fmt", vec!["fmt", "--all", "--", "--check"]),
        // --workspace only checks, so it covers nat-ebpf too although that
        // crate links only for the bpf target.
        (
            "clippy",
            vec![
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ],
        ),
        // The end-to-end tests run the real natctl binary, which `cargo
        // test` does not put in target/debug by itself.
        ("build", vec!["build", "--package", "nat-ctl", "--bins"]),
        // The default members: everything but nat-ebpf, which nat-ctl's
        // build script builds for the bpf target.
        ("test", test),
    ];
    for (name, args) in steps {
        let mut command = cmd::cargo(&args);
        let status = cmd::status(&mut command)?;
        if !status.success() {
            bail!(
                "step `{name}` failed: `{}` ({status})",
                cmd::display(&command)
            );
        }
    }
    println!("xtask: test: fmt, clippy and tests passed");
    Ok(())
}
