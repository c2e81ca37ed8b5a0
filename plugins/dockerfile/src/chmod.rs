//! `COPY`/`ADD --chmod` values: octal, or symbolic as chmod(1) and BSD's
//! `setmode` read them, with BuildKit's errors. The symbolic parser follows
//! `ParseWithUmask` of tonistiigi/dchapes-mode as BuildKit vendors it
//! (v0.0.0-20250318174251-73d941a28323): `X` also counts with `=`, and
//! `-X` clears like `-x`.

const SET_UID: u16 = 0o4000;
const SET_GID: u16 = 0o2000;
const STICKY: u16 = 0o1000;
const USER: u16 = 0o700;
const GROUP: u16 = 0o070;
const OTHER: u16 = 0o007;
const READ: u16 = 0o444;
const WRITE: u16 = 0o222;
const EXECUTE: u16 = 0o111;
const STANDARD: u16 = SET_UID | SET_GID | USER | GROUP | OTHER;

/// `cmd2` flags of a copy command (`u=g` and friends).
const CLEAR: u8 = 1;
const SET: u8 = 2;
const GROUP_BITS: u8 = 4;
const OTHER_BITS: u8 = 8;
const USER_BITS: u8 = 16;

/// A parsed `--chmod` value.
#[derive(Debug, PartialEq, Eq)]
pub enum Mode {
    /// An absolute mode, at most `0o7777`.
    Octal(u32),
    /// Changes relative to each file's own mode (`u+x,go-w`).
    Symbolic(Vec<Command>),
}

/// One step of a symbolic mode, as `setmode` compiles it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Command {
    op: u8,
    copy: u8,
    bits: u16,
}

impl Mode {
    /// The mode a file with permission bits `mode` ends up with.
    pub fn apply(&self, mode: u32, is_dir: bool) -> u32 {
        match self {
            Mode::Octal(bits) => *bits,
            Mode::Symbolic(commands) => u32::from(apply(commands, mode as u16 & 0o7777, is_dir)),
        }
    }
}

/// Parses `--chmod`: BuildKit tries octal first and falls back to the
/// symbolic syntax.
pub fn parse(text: &str) -> Result<Mode, String> {
    let not_octal = || {
        format!(
            "invalid chmod parameter: '{text}'. it should be octal string and between 0 and 07777"
        )
    };
    if !text.is_empty() && text.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return match u32::from_str_radix(text, 8) {
            Ok(bits) if bits <= 0o7777 => Ok(Mode::Octal(bits)),
            _ => Err(not_octal()),
        };
    }
    // A leading digit makes the symbolic parser read a number, whose
    // failure BuildKit reports as the octal error.
    if text.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(not_octal());
    }
    symbolic(text.as_bytes())
        .map(Mode::Symbolic)
        .ok_or_else(|| "invalid syntax".to_owned())
}

/// `setmode`'s grammar: `[ugoa]*([-+=]([rstwxXugo]*))+` clauses separated
/// by commas; none when `s` does not follow it.
fn symbolic(mut s: &[u8]) -> Option<Vec<Command>> {
    let mut commands = Vec::new();
    let mut equal_done = false;
    loop {
        let mut who: u16 = 0;
        loop {
            who |= match *s.first()? {
                b'a' => STANDARD,
                b'u' => SET_UID | USER,
                b'g' => SET_GID | GROUP,
                b'o' => OTHER,
                _ => break,
            };
            s = &s[1..];
        }
        loop {
            let (&op, rest) = s.split_first()?;
            s = rest;
            match op {
                b'+' | b'-' => {}
                b'=' => equal_done = false,
                _ => return None,
            }
            who &= !STICKY;
            let (mut perm, mut perm_x) = (0u16, 0u16);
            loop {
                match s.first().copied().unwrap_or(0) {
                    b'r' => perm |= READ,
                    // set-id and sticky bits mean nothing for "other" alone.
                    b's' if who == 0 || who & !OTHER != 0 => perm |= SET_UID | SET_GID,
                    b't' if who == 0 || who & !OTHER != 0 => {
                        who |= STICKY;
                        perm |= STICKY;
                    }
                    b's' | b't' => {}
                    b'w' => perm |= WRITE,
                    b'X' if op == b'-' => perm |= EXECUTE,
                    b'X' => perm_x = EXECUTE,
                    b'x' => perm |= EXECUTE,
                    from @ (b'u' | b'g' | b'o') => {
                        if perm != 0 {
                            add(&mut commands, op, who, perm);
                            perm = 0;
                        }
                        if op == b'=' {
                            equal_done = true;
                        }
                        if perm_x != 0 {
                            add(&mut commands, b'X', who, perm_x);
                            perm_x = 0;
                        }
                        add(&mut commands, from, who, u16::from(op));
                    }
                    _ => {
                        if perm != 0 || (op == b'=' && !equal_done) {
                            if op == b'=' {
                                equal_done = true;
                            }
                            add(&mut commands, op, who, perm);
                        }
                        if perm_x != 0 {
                            add(&mut commands, b'X', who, perm_x);
                        }
                        break;
                    }
                }
                s = &s[1..];
            }
            match s.first() {
                None => return Some(commands),
                Some(b',') => {
                    s = &s[1..];
                    break;
                }
                // Another operator for the same users (`u+r-w`).
                Some(_) => {}
            }
        }
    }
}

/// `setmode`'s `addcmd`, with no umask.
fn add(commands: &mut Vec<Command>, op: u8, who: u16, arg: u16) {
    let masked = |arg: u16| if who != 0 { who & arg } else { arg };
    match op {
        b'=' => {
            commands.push(Command {
                op: b'-',
                copy: 0,
                bits: if who != 0 { who } else { STANDARD },
            });
            commands.push(Command {
                op: b'+',
                copy: 0,
                bits: masked(arg),
            });
        }
        b'+' | b'-' | b'X' => commands.push(Command {
            op,
            copy: 0,
            bits: masked(arg),
        }),
        _ => {
            // Without a umask, a copy may touch every bit of the users named.
            let mut copy = if who == 0 {
                USER_BITS | GROUP_BITS | OTHER_BITS
            } else {
                [(0o400, USER_BITS), (0o040, GROUP_BITS), (0o004, OTHER_BITS)]
                    .into_iter()
                    .filter(|(read, _)| who & read != 0)
                    .fold(0, |copy, (_, flag)| copy | flag)
            };
            copy |= match arg as u8 {
                b'+' => SET,
                b'-' => CLEAR,
                _ => SET | CLEAR,
            };
            commands.push(Command { op, copy, bits: !0 });
        }
    }
}

/// `setmode`'s `getmode`: runs the commands over `mode`.
fn apply(commands: &[Command], mode: u16, is_dir: bool) -> u16 {
    let original = mode;
    let mut mode = mode;
    for c in commands {
        let value = match c.op {
            b'u' => (mode & USER) >> 6,
            b'g' => (mode & GROUP) >> 3,
            b'o' => mode & OTHER,
            b'+' => {
                mode |= c.bits;
                continue;
            }
            b'-' => {
                mode &= !c.bits;
                continue;
            }
            _ => {
                if original & EXECUTE != 0 || is_dir {
                    mode |= c.bits;
                }
                continue;
            }
        };
        let shifts = [(USER_BITS, 6), (GROUP_BITS, 3), (OTHER_BITS, 0)];
        if c.copy & CLEAR != 0 {
            let clear = if c.copy & SET != 0 { OTHER } else { value };
            for (flag, shift) in shifts {
                if c.copy & flag != 0 {
                    mode &= !((clear << shift) & c.bits);
                }
            }
        }
        if c.copy & SET != 0 {
            for (flag, shift) in shifts {
                if c.copy & flag != 0 {
                    mode |= (value << shift) & c.bits;
                }
            }
        }
    }
    mode & 0o7777
}

#[cfg(test)]
mod tests {
    use super::*;

    fn applied(text: &str, mode: u32) -> u32 {
        parse(text).unwrap().apply(mode, false)
    }

    #[test]
    fn octal_modes() {
        assert_eq!(parse("755"), Ok(Mode::Octal(0o755)));
        assert_eq!(parse("0644"), Ok(Mode::Octal(0o644)));
        assert_eq!(parse("7777"), Ok(Mode::Octal(0o7777)));
        assert_eq!(parse("0"), Ok(Mode::Octal(0)));
        assert_eq!(applied("700", 0o644), 0o700);
    }

    #[test]
    fn octal_errors_are_buildkits() {
        let message = |m: &str| {
            format!(
                "invalid chmod parameter: '{m}'. it should be octal string and between 0 and 07777"
            )
        };
        for bad in ["888", "17777", "0o755", "9", "7a", "77777777777777"] {
            assert_eq!(parse(bad), Err(message(bad)), "{bad}");
        }
    }

    #[test]
    fn symbolic_modes_apply_like_chmod() {
        let cases: &[(&str, u32, u32)] = &[
            ("u+x", 0o644, 0o744),
            ("+x", 0o644, 0o755),
            ("a+x", 0o600, 0o711),
            ("go-w", 0o666, 0o644),
            ("a=rX", 0o640, 0o444),
            // X counts with = too, and -X clears like -x.
            ("a=rX", 0o750, 0o555),
            ("u=rwX,go=rX", 0o700, 0o755),
            ("u=rwX,go=rX", 0o644, 0o644),
            ("-X", 0o777, 0o666),
            ("a+rX", 0o710, 0o755),
            ("a+rX", 0o600, 0o644),
            ("u=rwx,go=rx", 0o000, 0o755),
            ("go=", 0o777, 0o700),
            ("u=rwx,go=u-w", 0o000, 0o755),
            ("g=u", 0o740, 0o770),
            ("o+t", 0o755, 0o755),
            ("+t", 0o755, 0o1755),
            ("u+s", 0o755, 0o4755),
            ("g+s", 0o755, 0o2755),
            ("u+r-w", 0o200, 0o400),
            ("=", 0o777, 0o000),
            ("a-rwx,u+rw", 0o777, 0o600),
        ];
        for (text, from, to) in cases {
            assert_eq!(applied(text, *from), *to, "{text} on {from:o}");
        }
        assert_eq!(parse("+X").unwrap().apply(0o644, true), 0o755);
        assert_eq!(parse("u=rwX,go=rX").unwrap().apply(0o644, true), 0o755);
    }

    #[test]
    fn symbolic_syntax_errors() {
        for bad in [
            "u", "u+x,", ",u+x", "x", "u*x", "u+x,z+r", "u+7", "ugo", "a+x,",
        ] {
            assert_eq!(parse(bad), Err("invalid syntax".to_owned()), "{bad}");
        }
        for ok in [
            "u+",
            "-",
            "=",
            "+",
            "u+x,g-w,o=r",
            "ug+rw",
            "u=g",
            "a+rwxXst",
        ] {
            assert!(parse(ok).is_ok(), "{ok}");
        }
    }
}
