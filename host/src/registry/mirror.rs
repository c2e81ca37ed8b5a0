//! Pull mirrors: `--registry-map orig=new` for any registry and
//! `--registry-mirror` for Docker Hub, each `host[/path-prefix]`, turned
//! into the ordered list of places an image is pulled from. Pushes never
//! use mirrors.

use super::reference::{DOCKER_HUB, Reference, valid_component, valid_registry};
use super::tls::same_registry;

/// One place to pull an image from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// The reference rewritten onto the mirror (or the original).
    pub reference: Reference,
    /// The mirror as configured, for logs; `None` for the original registry.
    pub mirror: Option<String>,
}

/// A mirror: a registry and a repository prefix under which it serves the original's repositories.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Mirror {
    registry: String,
    prefix: Option<String>,
}

/// Parses `host[:port][/path/prefix]` (a leading `https://` is ignored).
fn parse_mirror(spec: &str) -> Result<Mirror, String> {
    let s = spec
        .trim()
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .trim_end_matches('/');
    let (host, prefix) = match s.split_once('/') {
        Some((h, p)) => (h, Some(p)),
        None => (s, None),
    };
    if !valid_registry(host) {
        return Err(format!(
            "{host:?} is not a registry host[:port], as in mirror.gcr.io or 10.0.0.5:5000/dockerhub"
        ));
    }
    if let Some(p) = prefix
        && let Some(bad) = p.split('/').find(|c| !valid_component(c))
    {
        return Err(format!(
            "path component {bad:?} is invalid: use lowercase letters and digits, separated by '.', '_', '__' or '-'"
        ));
    }
    let registry = match host {
        "docker.io" | "registry-1.docker.io" => DOCKER_HUB,
        h => h,
    };
    Ok(Mirror {
        registry: registry.to_owned(),
        prefix: prefix.map(str::to_owned),
    })
}

/// Checks a mirror spec, saying what is wrong with it.
pub fn check_mirror(spec: &str) -> Result<(), String> {
    parse_mirror(spec).map(|_| ())
}

/// Parses kaniko's `--registry-map` value (and `KANIKO_REGISTRY_MAP`):
/// `orig=new` pairs separated by `;`, an original named again adding
/// another mirror after the first, e.g. `index.docker.io=a.io;index.docker.io=b.io/hub`.
pub fn parse_registry_map(value: &str) -> Result<Vec<(String, Vec<String>)>, String> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for pair in value.split(';').filter(|p| !p.trim().is_empty()) {
        let (orig, new) = pair
            .split_once('=')
            .ok_or_else(|| format!("{pair:?} is not orig=new, e.g. docker.io=mirror.gcr.io"))?;
        let (orig, new) = (orig.trim(), new.trim());
        if orig.is_empty() || new.is_empty() {
            return Err(format!(
                "{pair:?} has an empty side: expected orig=new, e.g. docker.io=mirror.gcr.io"
            ));
        }
        check_mirror(new)?;
        match out.iter_mut().find(|(o, _)| same_registry(o, orig)) {
            Some((_, news)) => news.push(new.to_owned()),
            None => out.push((orig.to_owned(), vec![new.to_owned()])),
        }
    }
    Ok(out)
}

fn onto(r: &Reference, m: &Mirror) -> Reference {
    Reference {
        registry: m.registry.clone(),
        repository: match &m.prefix {
            Some(p) => format!("{p}/{}", r.repository),
            None => r.repository.clone(),
        },
        ..r.clone()
    }
}

/// Where to pull `r` from, in order: the `map` entries for its registry,
/// then (for Docker Hub) the `mirrors`, then the registry itself unless
/// `skip_fallback` and at least one mirror applies. Specs are expected to
/// be checked already ([`check_mirror`]); an invalid one is an error here too.
pub fn candidates(
    r: &Reference,
    mirrors: &[String],
    map: &[(String, Vec<String>)],
    skip_fallback: bool,
) -> Result<Vec<Candidate>, (String, String)> {
    let hub = if r.registry == DOCKER_HUB {
        mirrors
    } else {
        &[]
    };
    let specs = map
        .iter()
        .filter(|(orig, _)| same_registry(orig, &r.registry))
        .flat_map(|(_, news)| news)
        .chain(hub);
    let mut out: Vec<Candidate> = Vec::new();
    for spec in specs {
        let m = parse_mirror(spec).map_err(|detail| (spec.clone(), detail))?;
        let reference = onto(r, &m);
        if !out.iter().any(|c| c.reference == reference) {
            out.push(Candidate {
                reference,
                mirror: Some(spec.clone()),
            });
        }
    }
    if out.is_empty() || !skip_fallback {
        out.retain(|c| c.reference != *r);
        out.push(Candidate {
            reference: r.clone(),
            mirror: None,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs(c: &[Candidate]) -> Vec<(String, Option<&str>)> {
        c.iter()
            .map(|c| (c.reference.to_string(), c.mirror.as_deref()))
            .collect()
    }

    fn r(s: &str) -> Reference {
        Reference::parse(s).unwrap()
    }

    #[test]
    fn hub_images_try_mirrors_in_order_then_hub() {
        let mirrors = vec![
            "mirror.gcr.io".to_owned(),
            "10.0.0.5:5000/hub/cache".to_owned(),
        ];
        let c = candidates(&r("busybox:1.36"), &mirrors, &[], false).unwrap();
        assert_eq!(
            refs(&c),
            vec![
                (
                    "mirror.gcr.io/library/busybox:1.36".to_owned(),
                    Some("mirror.gcr.io")
                ),
                (
                    "10.0.0.5:5000/hub/cache/library/busybox:1.36".to_owned(),
                    Some("10.0.0.5:5000/hub/cache")
                ),
                ("index.docker.io/library/busybox:1.36".to_owned(), None),
            ]
        );
        let c = candidates(&r("busybox:1.36"), &mirrors, &[], true).unwrap();
        assert_eq!(c.len(), 2);
        assert!(c.iter().all(|c| c.mirror.is_some()));
    }

    #[test]
    fn mirrors_are_for_docker_hub_only_and_maps_for_any_registry() {
        let mirrors = vec!["mirror.gcr.io".to_owned()];
        let map = parse_registry_map("gcr.io=a.io;docker.io=b.io/hub;gcr.io=c.io:5000/x").unwrap();
        let c = candidates(&r("gcr.io/p/app:v1"), &mirrors, &map, false).unwrap();
        assert_eq!(
            refs(&c),
            vec![
                ("a.io/p/app:v1".to_owned(), Some("a.io")),
                ("c.io:5000/x/p/app:v1".to_owned(), Some("c.io:5000/x")),
                ("gcr.io/p/app:v1".to_owned(), None),
            ]
        );
        let c = candidates(&r("alpine"), &mirrors, &map, true).unwrap();
        assert_eq!(
            refs(&c),
            vec![
                (
                    "b.io/hub/library/alpine:latest".to_owned(),
                    Some("b.io/hub")
                ),
                (
                    "mirror.gcr.io/library/alpine:latest".to_owned(),
                    Some("mirror.gcr.io")
                ),
            ]
        );
        let c = candidates(&r("quay.io/a/b"), &mirrors, &map, true).unwrap();
        assert_eq!(refs(&c), vec![("quay.io/a/b:latest".to_owned(), None)]);
    }

    #[test]
    fn digests_and_tags_survive_the_rewrite() {
        let d = crate::digest::Digest::of(b"x");
        let pinned = r(&format!("busybox:1@{d}"));
        let c = candidates(&pinned, &["m.io".to_owned()], &[], false).unwrap();
        assert_eq!(c[0].reference.digest, Some(d));
        assert_eq!(c[0].reference.tag.as_deref(), Some("1"));
        assert_eq!(c[0].reference.registry, "m.io");
    }

    #[test]
    fn a_mirror_naming_the_original_is_tried_once() {
        let c = candidates(&r("busybox"), &["docker.io".to_owned()], &[], false).unwrap();
        assert_eq!(
            refs(&c),
            vec![("index.docker.io/library/busybox:latest".to_owned(), None)]
        );
    }

    #[test]
    fn registry_maps_parse_like_kaniko() {
        assert_eq!(
            parse_registry_map("index.docker.io=a.io;docker.io=b.io;;gcr.io=c.io").unwrap(),
            vec![
                (
                    "index.docker.io".to_owned(),
                    vec!["a.io".to_owned(), "b.io".to_owned()]
                ),
                ("gcr.io".to_owned(), vec!["c.io".to_owned()]),
            ]
        );
        assert!(parse_registry_map("").unwrap().is_empty());
        for bad in [
            "gcr.io",
            "=a.io",
            "gcr.io=",
            "gcr.io=UPPER.io/Path",
            "gcr.io=a.io/-x",
        ] {
            assert!(parse_registry_map(bad).is_err(), "{bad}");
        }
        assert!(check_mirror("https://mirror.gcr.io/").is_ok());
        assert!(check_mirror("bad host").is_err());
        let err = candidates(&r("busybox"), &["bad host".to_owned()], &[], false).unwrap_err();
        assert_eq!(err.0, "bad host");
    }
}
