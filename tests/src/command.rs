//! Running external tools with errors that show what was run and what it said.

use anyhow::{Context, Result, bail};
use std::process::{Command, Output};

/// Runs `cmd` to completion and returns its stdout, failing with its stderr
/// when it exits non-zero.
pub(crate) fn run(cmd: &mut Command) -> Result<Vec<u8>> {
    let output = output(cmd)?;
    if !output.status.success() {
        bail!(
            "{} failed ({}):\n{}{}",
            describe(cmd),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(output.stdout)
}

/// Runs `cmd` to completion whatever its exit status.
pub(crate) fn output(cmd: &mut Command) -> Result<Output> {
    cmd.output().with_context(|| {
        format!(
            "cannot start {}: is it installed? (`cargo xtask test` installs the test tools)",
            describe(cmd)
        )
    })
}

/// The command line for messages, with credentials masked so that a failing
/// test never prints a password.
fn describe(cmd: &Command) -> String {
    let mut line = cmd.get_program().to_string_lossy().into_owned();
    let mut secret_next = false;
    for arg in cmd.get_args() {
        let arg = arg.to_string_lossy();
        line.push(' ');
        line.push_str(if secret_next { "***" } else { &arg });
        secret_next = arg.ends_with("-creds");
    }
    format!("`{line}`")
}
