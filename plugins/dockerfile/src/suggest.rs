//! "did you mean ...?" hints, as BuildKit's `suggest.WrapError` adds them.

/// The option closest to `value` by edit distance (at most 2), matched
/// case-sensitively; none when `value` is itself an option. BuildKit breaks
/// ties by map order (random); here the first of `options` wins.
pub fn closest<'a>(value: &str, options: &[&'a str]) -> Option<&'a str> {
    let mut best: Option<(&str, usize)> = None;
    for option in options {
        if *option == value {
            return None;
        }
        let distance = levenshtein(value, option);
        if distance < best.map_or(3, |(_, d)| d) {
            best = Some((option, distance));
        }
    }
    best.map(|(option, _)| option)
}

/// `message`, with ` (did you mean X?)` when an option is close to `value`.
pub fn wrap(message: String, value: &str, options: &[&str]) -> String {
    match closest(value, options) {
        Some(option) => format!("{message} (did you mean {option}?)"),
        None => message,
    }
}

/// Edit distance in characters.
fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = if ca == *cb {
                diagonal
            } else {
                1 + diagonal.min(above).min(row[j])
            };
            diagonal = above;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances() {
        assert_eq!(levenshtein("", "abc"), 3);
        assert_eq!(levenshtein("mount", "mout"), 1);
        assert_eq!(levenshtein("kitten", "sitting"), 3);
        assert_eq!(levenshtein("same", "same"), 0);
    }

    #[test]
    fn suggests_only_close_options() {
        let options = ["mount", "network", "security"];
        assert_eq!(closest("mout", &options), Some("mount"));
        assert_eq!(closest("netwrk", &options), Some("network"));
        assert_eq!(closest("privileged", &options), None);
        assert_eq!(closest("mount", &options), None);
        assert_eq!(
            wrap("unknown flag: --mont".into(), "mont", &options),
            "unknown flag: --mont (did you mean mount?)"
        );
        assert_eq!(wrap("bad".into(), "zzzzzz", &options), "bad");
    }
}
