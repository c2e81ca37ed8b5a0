//! Instruction flags (`--name[=value]`), checked the way BuildKit's BFlags
//! checks them.

/// What values a flag takes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `--name` or `--name=true|false`.
    Bool,
    /// `--name=value`, at most once.
    String,
    /// `--name=value`, repeatable.
    Strings,
}

/// A flag an instruction accepts.
pub struct Spec {
    /// The name without `--`.
    pub name: &'static str,
    /// What values it takes.
    pub kind: Kind,
}

/// The flags given to one instruction, validated against its specs.
#[derive(Debug, Default)]
pub struct Flags {
    values: Vec<(&'static str, Vec<String>)>,
}

impl Flags {
    /// Whether the flag was given.
    pub fn is_used(&self, name: &str) -> bool {
        self.values.iter().any(|(n, _)| *n == name)
    }

    /// The value of a string flag.
    pub fn value(&self, name: &str) -> Option<&str> {
        self.values
            .iter()
            .find(|(n, _)| *n == name)
            .and_then(|(_, values)| values.last())
            .map(String::as_str)
    }

    /// Whether a bool flag was given as true.
    pub fn is_true(&self, name: &str) -> bool {
        self.value(name) == Some("true")
    }
}

/// Checks `given` (name, value) flags of `keyword` against `specs`.
pub fn parse<'a>(
    keyword: &str,
    specs: &[Spec],
    given: impl IntoIterator<Item = (&'a str, Option<&'a str>)>,
) -> Result<Flags, String> {
    let mut flags = Flags::default();
    for (name, value) in given {
        // The WIT leaves open whether the name keeps its dashes.
        let name = name.strip_prefix("--").unwrap_or(name);
        let Some(spec) = specs.iter().find(|spec| spec.name == name) else {
            return Err(format!("unknown flag --{name} for {keyword}"));
        };
        let value = match (spec.kind, value) {
            (Kind::Bool, None) => "true".to_owned(),
            (Kind::Bool, Some(v)) if v.eq_ignore_ascii_case("true") => "true".to_owned(),
            (Kind::Bool, Some(v)) if v.eq_ignore_ascii_case("false") => "false".to_owned(),
            (Kind::Bool, Some("")) | (Kind::String | Kind::Strings, None) => {
                return Err(format!("missing a value on flag --{name} for {keyword}"));
            }
            (Kind::Bool, Some(v)) => {
                return Err(format!(
                    "expecting boolean value for flag --{name} of {keyword}, not: {v}"
                ));
            }
            (Kind::String | Kind::Strings, Some(v)) => v.to_owned(),
        };
        match flags.values.iter_mut().find(|(n, _)| *n == spec.name) {
            Some((_, values)) if spec.kind == Kind::Strings => values.push(value),
            Some(_) => return Err(format!("duplicate flag --{name} for {keyword}")),
            None => flags.values.push((spec.name, vec![value])),
        }
    }
    Ok(flags)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPECS: &[Spec] = &[
        Spec {
            name: "link",
            kind: Kind::Bool,
        },
        Spec {
            name: "chown",
            kind: Kind::String,
        },
        Spec {
            name: "exclude",
            kind: Kind::Strings,
        },
    ];

    #[test]
    fn values_by_kind() {
        let flags = parse(
            "COPY",
            SPECS,
            [
                ("link", Some("FALSE")),
                ("--chown", Some("1:2")),
                ("exclude", Some("a")),
                ("exclude", Some("b")),
            ],
        )
        .unwrap();
        assert!(flags.is_used("link"));
        assert!(!flags.is_true("link"));
        assert_eq!(flags.value("chown"), Some("1:2"));
        assert_eq!(flags.value("exclude"), Some("b"));
        assert!(!flags.is_used("from"));
        assert!(
            parse("COPY", SPECS, [("link", None)])
                .unwrap()
                .is_true("link")
        );
    }

    #[test]
    fn errors_name_the_flag_and_the_instruction() {
        assert_eq!(
            parse("WORKDIR", &[], [("mount", Some("x"))]).unwrap_err(),
            "unknown flag --mount for WORKDIR"
        );
        assert_eq!(
            parse("COPY", SPECS, [("chown", Some("a")), ("chown", Some("b"))]).unwrap_err(),
            "duplicate flag --chown for COPY"
        );
        assert_eq!(
            parse("COPY", SPECS, [("chown", None)]).unwrap_err(),
            "missing a value on flag --chown for COPY"
        );
        assert!(
            parse("COPY", SPECS, [("link", Some("yes"))])
                .unwrap_err()
                .contains("expecting boolean value")
        );
    }
}
