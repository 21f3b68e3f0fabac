//! server::sms: sends a registration code by running the operator's SMS command.
//!
//! Owns the command's calling convention (documented in `docs/relay-protocol.md`):
//! `/bin/sh -c 'CMD "$@"' tandem-relay-sms NUMBER CODE`, i.e. the number and the code
//! appended as two arguments (as git does with `core.sshCommand`), plus `TANDEM_NUMBER`,
//! `TANDEM_CODE` and `TANDEM_TEXT` (the whole SMS text) in the environment. The number
//! has been checked as E.164 and the code is digits, so neither can inject shell syntax.
//! Must not: decide whether a code may be sent (the hub rate-limits), or log the code.

use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

use crate::relay::protocol::code_sms_text;

#[derive(Debug, thiserror::Error)]
pub(super) enum SmsError {
    #[error("cannot start the SMS command: {0}")]
    Spawn(std::io::Error),
    #[error("the SMS command failed ({status}): {stderr}")]
    Failed { status: String, stderr: String },
    #[error("the SMS command did not finish within {0:?}")]
    Timeout(Duration),
}

/// Most bytes of the command's stderr kept for the log.
const STDERR_KEEP: usize = 512;

/// Runs `command` to send `code` to `number`; Ok once it exited with status 0.
pub(super) async fn send_code(
    command: &str,
    number: &str,
    code: &str,
    timeout: Duration,
) -> Result<(), SmsError> {
    let child = Command::new("/bin/sh")
        .arg("-c")
        .arg(format!("{command} \"$@\""))
        .arg("tandem-relay-sms")
        .arg(number)
        .arg(code)
        .env("TANDEM_NUMBER", number)
        .env("TANDEM_CODE", code)
        .env("TANDEM_TEXT", code_sms_text(code))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(SmsError::Spawn)?;
    let output = match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(result) => result.map_err(SmsError::Spawn)?,
        // Dropping the future drops the child, which kills it (kill_on_drop).
        Err(_) => return Err(SmsError::Timeout(timeout)),
    };
    if output.status.success() {
        return Ok(());
    }
    let mut stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    if stderr.len() > STDERR_KEEP {
        let mut cut = STDERR_KEEP;
        while !stderr.is_char_boundary(cut) {
            cut -= 1;
        }
        stderr.truncate(cut);
    }
    Err(SmsError::Failed {
        status: output.status.to_string(),
        stderr: stderr.trim().to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn arguments_environment_status_and_timeout() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("out");
        let command = format!(
            "printf '%s|%s|%s|%s|%s' \"$TANDEM_NUMBER\" \"$TANDEM_CODE\" \"$TANDEM_TEXT\" > '{}'; \
             printf",
            out.display()
        );
        // The appended "$@" makes the trailing `printf` print its arguments to stdout.
        send_code(&command, "+15550001111", "012345", Duration::from_secs(10))
            .await
            .expect("sent");
        let written = std::fs::read_to_string(&out).expect("read");
        assert_eq!(written, "+15550001111|012345|Tandem code: 012345||");

        let script = dir.path().join("args.sh");
        std::fs::write(
            &script,
            "#!/bin/sh\necho \"$1 $2\" > \"$(dirname \"$0\")/args\"\n",
        )
        .expect("write");
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod");
        send_code(
            &script.display().to_string(),
            "+1555",
            "999999",
            Duration::from_secs(10),
        )
        .await
        .expect("script");
        let args = std::fs::read_to_string(dir.path().join("args")).expect("args");
        assert_eq!(args, "+1555 999999\n");

        let err = send_code(
            "echo nope >&2; exit 3;",
            "+1555",
            "1",
            Duration::from_secs(10),
        )
        .await
        .expect_err("fails");
        assert!(
            matches!(&err, SmsError::Failed { stderr, .. } if stderr == "nope"),
            "{err}"
        );

        let err = send_code("sleep 5;", "+1555", "1", Duration::from_millis(100))
            .await
            .expect_err("times out");
        assert!(matches!(err, SmsError::Timeout(_)));
    }
}
