//! STOPSIGNAL values: a number or a Linux signal name, as moby's
//! `signal.ParseSignal` accepts them.

const NAMES: &[&str] = &[
    "ABRT", "ALRM", "BUS", "CHLD", "CLD", "CONT", "FPE", "HUP", "ILL", "INT", "IO", "IOT", "KILL",
    "PIPE", "POLL", "PROF", "PWR", "QUIT", "SEGV", "STKFLT", "STOP", "SYS", "TERM", "TRAP", "TSTP",
    "TTIN", "TTOU", "URG", "USR1", "USR2", "VTALRM", "WINCH", "XCPU", "XFSZ", "RTMIN", "RTMAX",
];

/// Whether `raw` names a signal: a non-zero number, or a name with or
/// without `SIG`, in any case (`RTMIN+3` and `RTMAX-2` included).
pub fn is_valid(raw: &str) -> bool {
    if let Ok(number) = raw.parse::<i64>() {
        return number != 0;
    }
    let upper = raw.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    let offset = |prefix: &str, max: u8| {
        name.strip_prefix(prefix)
            .and_then(|n| n.parse::<u8>().ok().filter(|v| v.to_string() == n))
            .is_some_and(|n| (1..=max).contains(&n))
    };
    NAMES.contains(&name) || offset("RTMIN+", 15) || offset("RTMAX-", 14)
}

#[cfg(test)]
mod tests {
    use super::is_valid;

    #[test]
    fn names_and_numbers() {
        for ok in [
            "SIGTERM",
            "term",
            "KILL",
            "9",
            "SIGRTMIN+15",
            "RTMAX-14",
            "sigrtmax",
            "-9",
            "+15",
        ] {
            assert!(is_valid(ok), "{ok}");
        }
        for bad in [
            "0", "SIGFOO", "", "RTMIN+16", "RTMAX-15", "RTMIN+0", "SIG", "RTMIN+01", "RTMIN++1",
        ] {
            assert!(!is_valid(bad), "{bad}");
        }
    }
}
