use std::path::Path;
use std::process::Stdio;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::{Error, Result};

/// What a finished command printed.
#[derive(Debug, Clone)]
pub struct ToolOutput {
    pub stdout: String,
    pub stderr: String,
}

/// Runs `program args...` with `KUBECONFIG` set, feeding `stdin` if given. A non-zero exit is an
/// error that carries the command line and both output streams.
pub(crate) async fn run(
    program: &Path,
    args: &[&str],
    kubeconfig: &Path,
    stdin: Option<&[u8]>,
) -> Result<ToolOutput> {
    let mut command = Command::new(program);
    command
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command.spawn().map_err(|source| Error::Spawn {
        program: program.to_path_buf(),
        source,
    })?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A write error here means the tool exited early; its exit status explains why.
        let _ = pipe.write_all(input).await;
        drop(pipe);
    }
    let output = child
        .wait_with_output()
        .await
        .map_err(|source| Error::Spawn {
            program: program.to_path_buf(),
            source,
        })?;
    let result = ToolOutput {
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    };
    if output.status.success() {
        Ok(result)
    } else {
        Err(Error::CommandFailed {
            command: command_line(program, args),
            status: output.status.to_string(),
            stdout: result.stdout,
            stderr: result.stderr,
        })
    }
}

pub(crate) fn command_line(program: &Path, args: &[&str]) -> String {
    let name = program
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| program.display().to_string());
    std::iter::once(name.as_str())
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ")
}
