//! Parses arbitrary text as a `WWW-Authenticate` header and checks the challenges
//! that come out, and the one kiln would answer.

#![no_main]

use kiln_fuzz::challenge::{Challenge, parse_challenges, pick_challenge};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|header: &str| {
    let challenges = parse_challenges(header);
    for challenge in &challenges {
        check_challenge(header, challenge);
    }
    if header.trim_start_matches([' ', '\t', ',']).is_empty() {
        assert!(challenges.is_empty(), "{challenges:?} from {header:?}");
    }

    // Serialising what was parsed, every value quoted, parses back to the same.
    let canonical = challenges
        .iter()
        .map(serialise)
        .collect::<Vec<_>>()
        .join(", ");
    assert_eq!(
        parse_challenges(&canonical),
        challenges,
        "{header:?} serialised as {canonical:?}"
    );

    let rank = |c: &Challenge| match c.scheme.as_str() {
        "bearer" => 0,
        "basic" => 1,
        _ => 2,
    };
    let best = challenges.iter().map(rank).min();
    let first_best = challenges.iter().find(|c| Some(rank(c)) == best).cloned();
    let picked = pick_challenge(challenges);
    assert_eq!(picked, first_best, "from {header:?}");
});

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn check_challenge(header: &str, challenge: &Challenge) {
    let at = format!("{challenge:?} from {header:?}");
    assert!(is_token(&challenge.scheme), "{at}");
    assert_eq!(
        challenge.scheme,
        challenge.scheme.to_ascii_lowercase(),
        "{at}"
    );
    assert!(
        header
            .to_ascii_lowercase()
            .contains(challenge.scheme.as_str()),
        "{at}"
    );
    for (name, value) in &challenge.params {
        assert!(is_token(name), "{at}");
        assert_eq!(*name, name.to_ascii_lowercase(), "{at}");
        assert_eq!(challenge.param(name), Some(value.as_str()), "{at}");
    }
}

fn serialise(challenge: &Challenge) -> String {
    let mut params: Vec<_> = challenge.params.iter().collect();
    params.sort();
    let params = params
        .iter()
        .map(|(name, value)| {
            let quoted = value.replace('\\', "\\\\").replace('"', "\\\"");
            format!("{name}=\"{quoted}\"")
        })
        .collect::<Vec<_>>()
        .join(", ");
    if params.is_empty() {
        challenge.scheme.clone()
    } else {
        format!("{} {params}", challenge.scheme)
    }
}
