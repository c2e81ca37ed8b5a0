//! Pull and push through a registry that requires basic auth, with
//! credentials from `$DOCKER_CONFIG/config.json`, never echoed in logs.

use anyhow::Result;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use kiln_e2e::{BaseImage, BuildContext, Registry, docker_config, run_kiln};

const USER: &str = "kiln-user";
const PASSWORD: &str = "pw-Secret-8416";

#[test]
fn basic_auth_pull_push() -> Result<()> {
    let registry = Registry::start_with_basic_auth(USER, PASSWORD)?;
    let base = BaseImage::busybox()?.push(&registry, "library/busybox:latest")?;
    let context =
        BuildContext::with_dockerfile(&format!("FROM {base}\nRUN echo authed > /authed\n"))?;
    let build = |config: &tempfile::TempDir, tag: &str| {
        run_kiln(
            [
                "build",
                "--context",
                &context.path().display().to_string(),
                "--destination",
                &registry.reference(tag),
                "--insecure-registry",
                &registry.addr(),
            ],
            &[("DOCKER_CONFIG", config.path().as_os_str())],
        )
    };

    let good = docker_config(&registry.addr(), USER, PASSWORD)?;
    let out = build(&good, "private/app:latest")?;
    out.ensure_success()?;
    let encoded = STANDARD.encode(format!("{USER}:{PASSWORD}"));
    for secret in [PASSWORD, encoded.as_str()] {
        assert!(
            !out.all().contains(secret),
            "a credential leaked into the log:\n{}",
            out.all()
        );
    }
    let root = registry.image("private/app:latest").flatten()?;
    assert_eq!(root.read("/authed")?, "authed\n");

    let wrong_password = "wrong-Secret-5309";
    let bad = docker_config(&registry.addr(), USER, wrong_password)?;
    let out = build(&bad, "private/denied:latest")?;
    out.ensure_failure()?;
    assert!(
        out.all().to_lowercase().contains("unauthorized"),
        "{}",
        out.all()
    );
    assert!(
        !out.all().contains(wrong_password),
        "a credential leaked into the log:\n{}",
        out.all()
    );
    Ok(())
}
