//! `WWW-Authenticate` challenges (RFC 7235): parsing a header and choosing the
//! scheme to answer. Pure and free of other kiln modules, so the fuzz crate
//! (`host/fuzz`) can compile it from source.

use std::collections::HashMap;

/// One challenge of a `WWW-Authenticate` header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Challenge {
    /// Lowercased scheme: `bearer`, `basic`, ...
    pub scheme: String,
    /// Parameters, names lowercased.
    pub params: HashMap<String, String>,
}

impl Challenge {
    /// The value of parameter `name`.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Parses RFC 7235 challenges: `Bearer realm="https://a/token",service="r",
/// scope="repository:x:pull,push"`, several per header, quoted commas kept.
pub fn parse_challenges(header: &str) -> Vec<Challenge> {
    let b = header.as_bytes();
    let mut i = 0;
    let skip_ws = |i: &mut usize| {
        while *i < b.len() && matches!(b[*i], b' ' | b'\t') {
            *i += 1;
        }
    };
    let token = |i: &mut usize| {
        let start = *i;
        while *i < b.len() && is_tchar(b[*i]) {
            *i += 1;
        }
        &header[start..*i]
    };
    let mut out: Vec<Challenge> = Vec::new();
    loop {
        while i < b.len() && matches!(b[i], b' ' | b'\t' | b',') {
            i += 1;
        }
        let scheme = token(&mut i);
        if scheme.is_empty() {
            break;
        }
        let mut challenge = Challenge {
            scheme: scheme.to_ascii_lowercase(),
            params: HashMap::new(),
        };
        loop {
            skip_ws(&mut i);
            let start = i;
            let name = token(&mut i);
            skip_ws(&mut i);
            if name.is_empty() || i >= b.len() || b[i] != b'=' {
                // Not a parameter: the next challenge's scheme.
                i = start;
                break;
            }
            i += 1;
            skip_ws(&mut i);
            if i >= b.len() || matches!(b[i], b'=' | b',') {
                // A token68 (`Basic dXNlcg==`), which kiln never needs.
                while i < b.len() && b[i] != b',' {
                    i += 1;
                }
                break;
            }
            let value = if b[i] == b'"' {
                i += 1;
                let mut v = String::new();
                while i < b.len() && b[i] != b'"' {
                    if b[i] == b'\\' && i + 1 < b.len() {
                        i += 1;
                    }
                    let ch = header[i..].chars().next().unwrap_or_default();
                    v.push(ch);
                    i += ch.len_utf8();
                }
                i = (i + 1).min(b.len());
                v
            } else {
                // Leniently up to the next separator: some servers leave URLs unquoted.
                let start = i;
                while i < b.len() && !matches!(b[i], b',' | b' ' | b'\t') {
                    i += 1;
                }
                header[start..i].to_owned()
            };
            challenge.params.insert(name.to_ascii_lowercase(), value);
            skip_ws(&mut i);
            if i < b.len() && b[i] == b',' {
                i += 1;
            } else {
                break;
            }
        }
        out.push(challenge);
        if i >= b.len() {
            break;
        }
    }
    out
}

/// The challenge kiln answers: bearer over basic over anything else.
pub fn pick_challenge(challenges: Vec<Challenge>) -> Option<Challenge> {
    let rank = |c: &Challenge| match c.scheme.as_str() {
        "bearer" => 0,
        "basic" => 1,
        _ => 2,
    };
    challenges.into_iter().min_by_key(rank)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_with_quoted_commas_and_several_schemes() {
        let h = r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull,push""#;
        let c = parse_challenges(h);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].scheme, "bearer");
        assert_eq!(c[0].param("realm"), Some("https://auth.docker.io/token"));
        assert_eq!(c[0].param("service"), Some("registry.docker.io"));
        assert_eq!(
            c[0].param("scope"),
            Some("repository:library/busybox:pull,push")
        );

        let c = parse_challenges(
            r#"Basic realm="Registry Realm", Bearer Realm=https://x/t , error="insufficient_scope""#,
        );
        assert_eq!(
            c.iter().map(|c| c.scheme.as_str()).collect::<Vec<_>>(),
            ["basic", "bearer"]
        );
        assert_eq!(c[0].param("realm"), Some("Registry Realm"));
        assert_eq!(c[1].param("realm"), Some("https://x/t"));
        assert_eq!(c[1].param("error"), Some("insufficient_scope"));
        assert_eq!(pick_challenge(c).unwrap().scheme, "bearer");

        let c = parse_challenges(r#"bearer realm="a\"b\\c""#);
        assert_eq!(
            parse_challenges(r#"Bearer realm="unterminated"#)[0].param("realm"),
            Some("unterminated")
        );
        assert_eq!(c[0].param("realm"), Some(r#"a"b\c"#));
        let c = parse_challenges("Basic dXNlcjpwYXNz==, Bearer realm=r");
        assert_eq!(
            c.iter().map(|c| c.scheme.as_str()).collect::<Vec<_>>(),
            ["basic", "bearer"]
        );
        assert_eq!(c[1].param("realm"), Some("r"));
        assert_eq!(parse_challenges("Basic")[0].params.len(), 0);
        assert!(parse_challenges("").is_empty());
        assert!(pick_challenge(Vec::new()).is_none());
    }
}
