//! `--chmod` modes: octal (`755`) or chmod(1)'s symbolic clauses
//! (`u+x,g-w,o=r`, `a+rX`, `go=u-w`), applied the way BuildKit applies them:
//! fsutil's `copier.copyFileInfo` runs `Set.Apply` of tonistiigi/dchapes-mode
//! (a port of BSD `setmode`, umask 0) as vendored by BuildKit
//! (v0.0.0-20250318174251-73d941a28323), where `X` also counts with `=`
//! and `-X` clears like `-x`.

use super::FsError;

const SUID: u32 = 0o4000;
const SGID: u32 = 0o2000;
const STICKY: u32 = 0o1000;
const USER: u32 = SUID | 0o700;
const GROUP: u32 = SGID | 0o070;
const OTHER: u32 = 0o007;
/// Everything `a` and an empty "who" touch: all but the sticky bit.
const STANDARD: u32 = USER | GROUP | OTHER;
const READ: u32 = 0o444;
const WRITE: u32 = 0o222;
const EXEC: u32 = 0o111;

/// A parsed `--chmod`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Chmod {
    /// An absolute mode, at most `07777`.
    Octal(u32),
    /// Symbolic clauses, compiled to the bit operations they stand for.
    Symbolic(Vec<ModeOp>),
}

/// One bit operation of a symbolic mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModeOp {
    /// Set these bits.
    Set(u32),
    /// Clear these bits.
    Clear(u32),
    /// Set these bits if the entry is a directory or already executable (`X`).
    SetIfExec(u32),
    /// Copy one class's permissions onto others (`g=u`, `o+g`, `u-o`).
    Copy(CopyOp),
}

/// The `u`/`g`/`o` right-hand side of a symbolic clause.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CopyOp {
    /// Shift of the class copied from: 6 (user), 3 (group) or 0 (other).
    from: u32,
    /// Shifts of the classes written to.
    to: [Option<u32>; 3],
    clear: bool,
    set: bool,
}

fn invalid(spec: &str, reason: impl Into<String>) -> FsError {
    FsError::Chmod {
        spec: spec.into(),
        reason: reason.into(),
    }
}

/// Parses `--chmod`: octal, or symbolic clauses separated by commas.
pub fn parse_chmod(spec: &str) -> Result<Chmod, FsError> {
    match spec.bytes().next() {
        None => Err(invalid(spec, "the mode is empty")),
        Some(b'0'..=b'9') => u32::from_str_radix(spec, 8)
            .ok()
            .filter(|m| *m <= 0o7777)
            .map(Chmod::Octal)
            .ok_or_else(|| {
                invalid(
                    spec,
                    "an octal mode takes the digits 0-7 and is at most 7777",
                )
            }),
        Some(_) => parse_symbolic(spec).map(Chmod::Symbolic),
    }
}

fn parse_symbolic(spec: &str) -> Result<Vec<ModeOp>, FsError> {
    let b = spec.as_bytes();
    let unexpected = |i: usize, expected: &str| match b.get(i) {
        Some(c) => invalid(
            spec,
            format!(
                "unexpected {:?} at position {}: expected {expected}",
                char::from(*c),
                i + 1
            ),
        ),
        None => invalid(spec, format!("it ends too early: expected {expected}")),
    };
    let mut ops = Vec::new();
    let mut i = 0;
    loop {
        let mut who = 0;
        while let Some(c) = b.get(i) {
            who |= match c {
                b'a' => STANDARD,
                b'u' => USER,
                b'g' => GROUP,
                b'o' => OTHER,
                _ => break,
            };
            i += 1;
        }
        // `=` with nothing after it still clears; this tracks whether the
        // clause already emitted its clear.
        let mut equal_done = false;
        loop {
            let op = match b.get(i) {
                Some(c @ (b'+' | b'-' | b'=')) => *c,
                _ => {
                    return Err(unexpected(i, "u, g, o or a, then an operator +, - or ="));
                }
            };
            i += 1;
            if op == b'=' {
                equal_done = false;
            }
            who &= !STICKY;
            let (mut perm, mut perm_x) = (0, 0);
            loop {
                // `s` and `t` mean nothing for "other" alone.
                let not_only_other = who == 0 || who & !OTHER != 0;
                match b.get(i) {
                    Some(b'r') => perm |= READ,
                    Some(b'w') => perm |= WRITE,
                    Some(b'x') => perm |= EXEC,
                    Some(b'X') if op == b'-' => perm |= EXEC,
                    Some(b'X') => perm_x = EXEC,
                    Some(b's') if not_only_other => perm |= SUID | SGID,
                    Some(b't') if not_only_other => {
                        who |= STICKY;
                        perm |= STICKY;
                    }
                    Some(b's' | b't') => {}
                    Some(c @ (b'u' | b'g' | b'o')) => {
                        if perm != 0 {
                            push_op(&mut ops, op, who, perm);
                            perm = 0;
                        }
                        if op == b'=' {
                            equal_done = true;
                        }
                        if perm_x != 0 {
                            ops.push(ModeOp::SetIfExec(scope(who, perm_x)));
                            perm_x = 0;
                        }
                        ops.push(ModeOp::Copy(copy_op(*c, who, op)));
                    }
                    _ => {
                        if perm != 0 || (op == b'=' && !equal_done) {
                            equal_done |= op == b'=';
                            push_op(&mut ops, op, who, perm);
                        }
                        if perm_x != 0 {
                            ops.push(ModeOp::SetIfExec(scope(who, perm_x)));
                        }
                        break;
                    }
                }
                i += 1;
            }
            match b.get(i) {
                None => return Ok(ops),
                Some(b',') => {
                    i += 1;
                    break;
                }
                Some(b'+' | b'-' | b'=') => {}
                Some(_) => {
                    return Err(unexpected(
                        i,
                        "permissions r, w, x, X, s, t, u, g or o, another operator or a comma",
                    ));
                }
            }
        }
    }
}

/// The bits of `perm` that `who` may touch; no "who" means all of them.
fn scope(who: u32, perm: u32) -> u32 {
    if who == 0 { perm } else { who & perm }
}

fn push_op(ops: &mut Vec<ModeOp>, op: u8, who: u32, perm: u32) {
    match op {
        b'+' => ops.push(ModeOp::Set(scope(who, perm))),
        b'-' => ops.push(ModeOp::Clear(scope(who, perm))),
        _ => {
            ops.push(ModeOp::Clear(if who == 0 { STANDARD } else { who }));
            ops.push(ModeOp::Set(scope(who, perm)));
        }
    }
}

fn copy_op(class: u8, who: u32, op: u8) -> CopyOp {
    let from = match class {
        b'u' => 6,
        b'g' => 3,
        _ => 0,
    };
    let to = |bit: u32, shift: u32| (who == 0 || who & bit != 0).then_some(shift);
    CopyOp {
        from,
        to: [to(0o400, 6), to(0o040, 3), to(0o004, 0)],
        clear: op != b'+',
        set: op != b'-',
    }
}

impl Chmod {
    /// The permission bits (`0o7777`) an entry gets, given its current bits.
    pub fn apply(&self, mode: u32, is_dir: bool) -> u32 {
        let original = mode & 0o7777;
        match self {
            Chmod::Octal(m) => *m,
            Chmod::Symbolic(ops) => ops.iter().fold(original, |m, op| match op {
                ModeOp::Set(bits) => m | bits,
                ModeOp::Clear(bits) => m & !bits,
                // `X` looks at the mode before any clause changed it.
                ModeOp::SetIfExec(bits) if is_dir || original & EXEC != 0 => m | bits,
                ModeOp::SetIfExec(_) => m,
                ModeOp::Copy(c) => {
                    let value = (m >> c.from) & 0o7;
                    let cleared = if c.set { 0o7 } else { value };
                    c.to.iter().flatten().fold(m, |m, shift| {
                        let mut m = m;
                        if c.clear {
                            m &= !(cleared << shift);
                        }
                        if c.set {
                            m |= value << shift;
                        }
                        m
                    })
                }
            }),
        }
    }

    /// The mode of directories that COPY creates on the way to its
    /// destination: BuildKit creates them with an octal `--chmod`'s
    /// permission bits, and 0755 otherwise.
    pub fn created_dir_mode(chmod: Option<&Chmod>) -> u32 {
        match chmod {
            Some(Chmod::Octal(m)) => m & 0o777,
            _ => 0o755,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(spec: &str, mode: u32, is_dir: bool) -> u32 {
        parse_chmod(spec).unwrap().apply(mode, is_dir)
    }

    #[test]
    fn symbolic_modes_follow_chmod() {
        // (spec, before, is_dir, after)
        let table: &[(&str, u32, bool, u32)] = &[
            ("=", 0o777, false, 0o000),
            ("+", 0o777, false, 0o777),
            ("-", 0o421, false, 0o421),
            ("+t", 0o421, false, 0o1421),
            ("-t", 0o1421, false, 0o421),
            ("u+r", 0o000, false, 0o400),
            ("u+w", 0o000, false, 0o200),
            ("u+x", 0o000, false, 0o100),
            ("u+X", 0o000, false, 0o000),
            ("u+X", 0o001, false, 0o101),
            ("u+X", 0o000, true, 0o100),
            ("u+s", 0o000, false, 0o4000),
            ("g+s", 0o000, false, 0o2000),
            ("o+s", 0o000, false, 0o000),
            ("g+X", 0o100, false, 0o110),
            ("o+X", 0o000, true, 0o001),
            ("+r", 0o000, false, 0o444),
            ("+x", 0o000, false, 0o111),
            ("+X", 0o010, false, 0o111),
            ("+X", 0o000, true, 0o111),
            ("+s", 0o000, false, 0o6000),
            ("-r", 0o777, false, 0o333),
            ("-w", 0o777, false, 0o555),
            ("-X", 0o777, false, 0o666),
            ("-X", 0o777, true, 0o666),
            ("u=rwX,go=rX", 0o755, true, 0o755),
            ("u=rwX,go=rX", 0o644, false, 0o644),
            ("u=rwX,go=rX", 0o700, false, 0o755),
            ("a=rX", 0o640, false, 0o444),
            ("a=rX", 0o700, true, 0o555),
            ("-s", 0o6777, false, 0o777),
            ("u-s", 0o4777, false, 0o777),
            ("u=rw", 0o777, false, 0o677),
            ("u=", 0o777, false, 0o077),
            ("=rw", 0o777, false, 0o666),
            ("u=g", 0o742, false, 0o442),
            ("u=g-w", 0o722, false, 0o022),
            ("u=g-w", 0o772, false, 0o572),
            ("u+o", 0o021, false, 0o121),
            ("u+go", 0o021, false, 0o321),
            ("-u", 0o111, false, 0o000),
            ("a=r,ug=rw,u+x", 0o777, false, 0o764),
            ("o+r,g+w,a+t,g-s,u+og", 0o2100, false, 0o1724),
            ("644", 0o777, false, 0o644),
            ("go-w", 0o777, false, 0o755),
            ("=rw,+X", 0o766, false, 0o777),
            ("u=rwx,go=rx", 0o000, false, 0o755),
            ("u=rwx,go=u-w", 0o000, false, 0o755),
            ("go=", 0o777, false, 0o700),
            ("go=u-w", 0o670, false, 0o644),
            ("go=u-w", 0o370, false, 0o311),
            ("a+rX", 0o600, false, 0o644),
            ("a+rX", 0o700, true, 0o755),
            ("a+rX", 0o640, false, 0o644),
            ("o=r", 0o777, false, 0o774),
            ("g-w", 0o775, false, 0o755),
            ("u+x,g-w", 0o664, false, 0o744),
            ("u+x-w", 0o644, false, 0o544),
            ("4755", 0o600, false, 0o4755),
        ];
        for (spec, before, is_dir, after) in table {
            assert_eq!(
                apply(spec, *before, *is_dir),
                *after,
                "{spec} on {before:o} (dir: {is_dir})"
            );
        }
    }

    #[test]
    fn invalid_modes_say_what_is_wrong() {
        for (spec, fragment) in [
            ("", "empty"),
            ("9", "octal"),
            ("17777", "at most 7777"),
            ("7u", "octal"),
            ("u", "ends too early"),
            ("go", "ends too early"),
            ("q+r", "unexpected 'q' at position 1"),
            ("u+q", "unexpected 'q' at position 3"),
            ("u+x,", "ends too early"),
            (",", "unexpected ','"),
        ] {
            let err = parse_chmod(spec).unwrap_err().to_string();
            assert!(err.contains(fragment), "{spec:?}: {err}");
            assert!(err.contains("--chmod"), "{err}");
        }
    }

    #[test]
    fn created_directories_take_octal_permission_bits_only() {
        let octal = parse_chmod("4700").unwrap();
        assert_eq!(Chmod::created_dir_mode(Some(&octal)), 0o700);
        let symbolic = parse_chmod("u+x").unwrap();
        assert_eq!(Chmod::created_dir_mode(Some(&symbolic)), 0o755);
        assert_eq!(Chmod::created_dir_mode(None), 0o755);
    }
}
