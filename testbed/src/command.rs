//! Running the host's tools (ip, mount, nft, ...) where a failure must say
//! which command failed and what it printed.
use std::process::{Command, Output, Stdio};

use anyhow::{ensure, Context, Result};

/// Runs `command` with stdin closed; a non-zero exit is an error carrying
/// the command and its stderr.
pub fn output(command: &mut Command) -> Result<Output> {
    let out = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {command:?}"))?;
    ensure!(
        out.status.success(),
        "{command:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(out)
}

/// [`output`]'s stdout, as text.
pub fn stdout(command: &mut Command) -> Result<String> {
    Ok(String::from_utf8_lossy(&output(command)?.stdout).into_owned())
}
