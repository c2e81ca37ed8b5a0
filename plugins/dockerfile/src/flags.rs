//! Instruction flags (`--name[=value]`), checked the way BuildKit's BFlags
//! checks them, with its messages.

use crate::suggest;

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

impl Spec {
    /// A `--name` or `--name=true|false` flag.
    pub const fn bool(name: &'static str) -> Spec {
        Spec {
            name,
            kind: Kind::Bool,
        }
    }

    /// A `--name=value` flag given at most once.
    pub const fn string(name: &'static str) -> Spec {
        Spec {
            name,
            kind: Kind::String,
        }
    }

    /// A repeatable `--name=value` flag.
    pub const fn strings(name: &'static str) -> Spec {
        Spec {
            name,
            kind: Kind::Strings,
        }
    }
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

    /// Every value of a flag, in order.
    pub fn values(&self, name: &str) -> &[String] {
        self.values
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(&[], |(_, values)| values.as_slice())
    }

    /// The value of a string flag.
    pub fn value(&self, name: &str) -> Option<&str> {
        self.values(name).last().map(String::as_str)
    }

    /// Whether a bool flag was given as true.
    pub fn is_true(&self, name: &str) -> bool {
        self.value(name) == Some("true")
    }

    /// A bool flag's value when it was given.
    pub fn bool(&self, name: &str) -> Option<bool> {
        self.value(name).map(|v| v == "true")
    }
}

/// Checks `given` (name, value) flags against `specs`.
pub fn parse<'a>(
    specs: &[Spec],
    given: impl IntoIterator<Item = (&'a str, Option<&'a str>)>,
) -> Result<Flags, String> {
    let mut flags = Flags::default();
    for (name, value) in given {
        // The WIT leaves open whether the name keeps its dashes.
        let name = name.strip_prefix("--").unwrap_or(name);
        let Some(spec) = specs.iter().find(|spec| spec.name == name) else {
            let names: Vec<&str> = specs.iter().map(|spec| spec.name).collect();
            return Err(suggest::wrap(
                format!("unknown flag: --{name}"),
                name,
                &names,
            ));
        };
        if spec.kind != Kind::Strings && flags.is_used(spec.name) {
            return Err(format!("duplicate flag specified: --{name}"));
        }
        let value = match (spec.kind, value) {
            (Kind::Bool, Some("")) | (Kind::String | Kind::Strings, None) => {
                return Err(format!("missing a value on flag: --{name}"));
            }
            (Kind::Bool, None) => "true".to_owned(),
            (Kind::Bool, Some(v)) => match v.to_lowercase().as_str() {
                "true" => "true".to_owned(),
                "false" => "false".to_owned(),
                _ => {
                    return Err(format!(
                        "expecting boolean value for flag --{name}, not: {v}"
                    ));
                }
            },
            (Kind::String | Kind::Strings, Some(v)) => v.to_owned(),
        };
        match flags.values.iter_mut().find(|(n, _)| *n == spec.name) {
            // Only repeatable flags get here twice.
            Some((_, values)) => values.push(value),
            None => flags.values.push((spec.name, vec![value])),
        }
    }
    Ok(flags)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPECS: &[Spec] = &[
        Spec::bool("link"),
        Spec::string("chown"),
        Spec::strings("exclude"),
    ];

    #[test]
    fn values_by_kind() {
        let flags = parse(
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
        assert_eq!(flags.bool("link"), Some(false));
        assert_eq!(flags.value("chown"), Some("1:2"));
        assert_eq!(flags.values("exclude"), ["a", "b"]);
        assert_eq!(flags.value("exclude"), Some("b"));
        assert!(!flags.is_used("from"));
        assert_eq!(flags.bool("from"), None);
        assert!(flags.values("from").is_empty());
        assert!(parse(SPECS, [("link", None)]).unwrap().is_true("link"));
        assert!(
            parse(SPECS, [("link", Some("True"))])
                .unwrap()
                .is_true("link")
        );
        assert_eq!(
            parse(SPECS, [("chown", Some(""))]).unwrap().value("chown"),
            Some("")
        );
    }

    #[test]
    fn errors_are_buildkits() {
        assert_eq!(
            parse(&[], [("mount", Some("x"))]).unwrap_err(),
            "unknown flag: --mount"
        );
        assert_eq!(
            parse(SPECS, [("lnk", None)]).unwrap_err(),
            "unknown flag: --lnk (did you mean link?)"
        );
        assert_eq!(
            parse(SPECS, [("chown", Some("a")), ("chown", Some("b"))]).unwrap_err(),
            "duplicate flag specified: --chown"
        );
        assert_eq!(
            parse(SPECS, [("link", None), ("link", Some("false"))]).unwrap_err(),
            "duplicate flag specified: --link"
        );
        assert_eq!(
            parse(SPECS, [("chown", None)]).unwrap_err(),
            "missing a value on flag: --chown"
        );
        assert_eq!(
            parse(SPECS, [("exclude", None)]).unwrap_err(),
            "missing a value on flag: --exclude"
        );
        assert_eq!(
            parse(SPECS, [("link", Some(""))]).unwrap_err(),
            "missing a value on flag: --link"
        );
        assert_eq!(
            parse(SPECS, [("link", Some("yes"))]).unwrap_err(),
            "expecting boolean value for flag --link, not: yes"
        );
    }
}
