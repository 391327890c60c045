//! Secrets from the kernel: tokens, cluster secrets and the key of the ids the edge makes.
//!
//! Nothing here may reach execution as a source of choices: what it makes enters the log
//! only as data a caller could have sent (a request id), or never (secrets).

use std::io::Read;

use anyhow::Context;

/// `N` bytes from `/dev/urandom`; `what` names the use in the error.
pub fn bytes<const N: usize>(what: &str) -> anyhow::Result<[u8; N]> {
    let mut out = [0u8; N];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut out))
        .with_context(|| format!("reading /dev/urandom for {what}"))?;
    Ok(out)
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
