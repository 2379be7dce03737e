//! The Redis serialization protocol (RESP), as much as the soak's look at
//! Redis needs: commands to send.

/// `args` as a RESP command.
#[cfg(feature = "redis")]
pub(crate) fn resp(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend(format!("${}\r\n", arg.len()).into_bytes());
        out.extend(arg.as_bytes());
        out.extend(b"\r\n");
    }
    out
}
