//! Parses arbitrary UTF-8 as an image reference and checks what any parse must satisfy.

#![no_main]

use kiln_fuzz::reference::{Reference, ReferenceErrorKind};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &str| {
    match Reference::parse(input) {
        Ok(reference) => check_reference(input, &reference),
        Err(error) => {
            assert_eq!(error.input, input);
            // The message names the input, so a user sees which reference was wrong.
            let message = error.to_string();
            assert!(
                message.starts_with(&format!("invalid image reference {input:?}: ")),
                "{message}"
            );
            if input.is_empty() {
                assert_eq!(error.kind, ReferenceErrorKind::Empty);
            }
        }
    }
});

fn check_reference(input: &str, reference: &Reference) {
    let at = format!("{reference:?} from {input:?}");
    assert!(!reference.registry.is_empty(), "{at}");
    assert!(!reference.repository.is_empty(), "{at}");
    assert!(
        !reference.repository.bytes().any(|b| b.is_ascii_uppercase()),
        "{at}"
    );
    assert!(
        reference.repository.split('/').all(|c| !c.is_empty()),
        "{at}"
    );
    // Docker Hub is always spelled one way, and its short names live under `library/`.
    assert_ne!(reference.registry, "docker.io", "{at}");
    if reference.registry == "index.docker.io" {
        assert!(reference.repository.contains('/'), "{at}");
    }
    // Something names the manifest to ask for.
    assert!(
        reference.tag.is_some() || reference.digest.is_some(),
        "{at}"
    );
    if let Some(digest) = &reference.digest {
        assert!(input.ends_with(&format!("@{digest}")), "{at}");
        assert_eq!(reference.tag_or_digest(), digest.to_string(), "{at}");
    }

    // The canonical form is itself a reference, naming the same image.
    let shown = reference.to_string();
    match Reference::parse(&shown) {
        Ok(again) => assert_eq!(&again, reference, "{at} shown as {shown:?}"),
        Err(error) => panic!("{at} is shown as {shown:?}, which does not parse: {error}"),
    }
    assert_eq!(
        reference.repo_name(),
        format!("{}/{}", reference.registry, reference.repository)
    );
}
