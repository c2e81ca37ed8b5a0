//! Push, pull and cross-repository mount against the real registry with no
//! auth, htpasswd basic auth and token auth, with credentials from
//! `config.json`, a `docker-credential-*` helper and (token auth) an OAuth2
//! refresh token; wrong credentials fail without leaking.
//!
//! kiln talks to the registry through a fault-free [`FaultProxy`], which
//! records every request so the tests can see the mounts.

use anyhow::{Context, Result};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use kiln_e2e::{
    BaseImage, BuildContext, CredentialHelper, FaultProxy, Faults, KilnOutput, Registry,
    docker_config, docker_config_json, run_kiln,
};
use serde_json::json;
use std::ffi::OsStr;
use std::path::Path;

const USER: &str = "kiln-user";
const PASSWORD: &str = "pw-Secret-7730";
const WRONG_PASSWORD: &str = "wrong-Secret-1142";

enum Auth {
    Anonymous,
    Basic,
    Token,
}

/// A registry, the recording proxy kiln uses to reach it, and a busybox
/// base in repository `a/base`.
struct Setup {
    registry: Registry,
    proxy: FaultProxy,
}

impl Setup {
    fn start(auth: &Auth) -> Result<Setup> {
        let registry = match auth {
            Auth::Anonymous => Registry::start()?,
            Auth::Basic => Registry::start_with_basic_auth(USER, PASSWORD)?,
            Auth::Token => Registry::start_with_token_auth(&[(USER, PASSWORD)])?,
        };
        BaseImage::busybox()?.push(&registry, "a/base:latest")?;
        let proxy = FaultProxy::start(&registry.addr(), Faults::none())?;
        Ok(Setup { registry, proxy })
    }

    /// Builds `dockerfile` and pushes it to `destination` (a repo:tag),
    /// with `DOCKER_CONFIG=config` and extra environment `envs`.
    fn build(
        &self,
        dockerfile: &str,
        destination: &str,
        config: &Path,
        envs: &[(&str, &OsStr)],
    ) -> Result<KilnOutput> {
        let context = BuildContext::with_dockerfile(dockerfile)?;
        let mut all_envs = vec![("DOCKER_CONFIG", config.as_os_str())];
        all_envs.extend_from_slice(envs);
        run_kiln(
            [
                "build",
                "--context",
                &context.path().display().to_string(),
                "--destination",
                &self.proxy.reference(destination),
                "--insecure-registry",
                &self.proxy.addr(),
            ],
            &all_envs,
        )
    }

    /// Why no blob was mounted into `repo` from `from` (201), if none was.
    fn mount_missing(&self, repo: &str, from: &str) -> Option<String> {
        let journal = self.proxy.journal();
        let prefix = format!("/v2/{repo}/blobs/uploads/?");
        let mounted = journal.iter().any(|e| {
            let target = e.target.replace("%2F", "/").replace("%2f", "/");
            e.method == "POST"
                && target.starts_with(&prefix)
                && target.contains("mount=sha256")
                && target.contains(&format!("from={from}"))
                && e.status == Some(201)
        });
        (!mounted).then(|| {
            format!(
                "no blob was mounted into {repo} from {from}; requests:\n{}",
                journal
                    .iter()
                    .map(|e| format!("{} {} -> {:?}", e.method, e.target, e.status))
                    .collect::<Vec<_>>()
                    .join("\n")
            )
        })
    }
}

/// Stage one builds an artifact, stage two copies it onto the base.
fn two_stage(base: &str) -> String {
    format!(
        "FROM {base} AS builder\n\
         RUN echo built-in-builder > /artifact\n\
         FROM {base}\n\
         COPY --from=builder /artifact /artifact\n\
         RUN echo final > /final\n"
    )
}

/// Builds on the image pushed by [`two_stage`].
fn on_top(base: &str) -> String {
    format!("FROM {base}\nRUN cat /artifact /final > /both\n")
}

fn assert_no_secret(out: &KilnOutput, secrets: &[&str]) {
    for secret in secrets {
        assert!(
            !out.all().contains(secret),
            "a credential leaked into kiln's output:\n{}",
            out.all()
        );
    }
}

/// The whole push, pull and mount round for `auth`; returns the setup for
/// mode-specific checks.
fn push_pull_mount(auth: &Auth) -> Result<Setup> {
    let setup = Setup::start(auth)?;
    let encoded = STANDARD.encode(format!("{USER}:{PASSWORD}"));
    let secrets = [PASSWORD, encoded.as_str()];
    let authenticated = !matches!(auth, Auth::Anonymous);

    let config = match auth {
        Auth::Anonymous => docker_config_json(&json!({}))?,
        _ => docker_config(&setup.proxy.addr(), USER, PASSWORD)?,
    };
    let base = setup.proxy.reference("a/base:latest");
    let out = setup.build(&two_stage(&base), "b/app:latest", config.path(), &[])?;
    out.ensure_success()?;
    assert_no_secret(&out, &secrets);
    let root = setup.registry.image("b/app:latest").flatten()?;
    assert_eq!(root.read("/artifact")?, "built-in-builder\n");
    assert_eq!(root.read("/final")?, "final\n");
    // Checked last, so that a missing mount does not hide other failures.
    let first_mount = setup.mount_missing("b/app", "a/base");

    // The second build pulls what the first pushed, with credentials from a
    // helper this time.
    let helper = CredentialHelper::new("kilntest", &setup.proxy.addr(), USER, PASSWORD)?;
    let path = helper.path_env()?;
    let (config_dir, envs): (&Path, Vec<(&str, &OsStr)>) = if authenticated {
        (helper.docker_config(), vec![("PATH", path.as_os_str())])
    } else {
        (config.path(), Vec::new())
    };
    let pushed = setup.proxy.reference("b/app:latest");
    let out = setup.build(&on_top(&pushed), "c/app:latest", config_dir, &envs)?;
    out.ensure_success()?;
    assert_no_secret(&out, &secrets);
    let root = setup.registry.image("c/app:latest").flatten()?;
    assert_eq!(root.read("/both")?, "built-in-builder\nfinal\n");
    let second_mount = setup.mount_missing("c/app", "b/app");
    if authenticated {
        let calls = helper.calls();
        assert!(
            calls.iter().any(|c| c.starts_with("get ")),
            "kiln never asked docker-credential-kilntest for credentials: {calls:?}"
        );

        let bad = docker_config(&setup.proxy.addr(), USER, WRONG_PASSWORD)?;
        let out = setup.build(&two_stage(&base), "d/denied:latest", bad.path(), &[])?;
        out.ensure_failure()?;
        assert!(
            out.all().to_lowercase().contains("unauthorized"),
            "{}",
            out.all()
        );
        let wrong_encoded = STANDARD.encode(format!("{USER}:{WRONG_PASSWORD}"));
        assert_no_secret(&out, &[WRONG_PASSWORD, wrong_encoded.as_str()]);
    }
    let missing: Vec<String> = [first_mount, second_mount].into_iter().flatten().collect();
    assert!(missing.is_empty(), "{}", missing.join("\n\n"));
    Ok(setup)
}

#[test]
fn anonymous_registry_push_pull_mount() -> Result<()> {
    push_pull_mount(&Auth::Anonymous)?;
    Ok(())
}

#[test]
fn basic_auth_registry_push_pull_mount() -> Result<()> {
    push_pull_mount(&Auth::Basic)?;
    Ok(())
}

#[test]
fn token_auth_registry_push_pull_mount() -> Result<()> {
    let setup = push_pull_mount(&Auth::Token)?;
    let issuer = setup
        .registry
        .token_issuer()
        .context("a token registry has an issuer")?;
    let requests = issuer.requests();
    // A mount needs pull on the source repository in the same token.
    assert!(
        requests.iter().any(|r| r.status == 200
            && r.scopes
                .iter()
                .any(|s| s.contains("repository:b/app:") && s.contains("push"))
            && r.scopes
                .iter()
                .any(|s| s.contains("repository:a/base:") && s.contains("pull"))),
        "kiln never asked for push on b/app together with pull on a/base: {requests:?}"
    );
    Ok(())
}

/// `identitytoken` in `config.json` is an OAuth2 refresh token: kiln trades
/// it at the realm with `grant_type=refresh_token`.
#[test]
fn token_auth_with_identity_token() -> Result<()> {
    let setup = Setup::start(&Auth::Token)?;
    let issuer = setup
        .registry
        .token_issuer()
        .context("a token registry has an issuer")?;
    let refresh = issuer
        .refresh_token(USER)
        .context("the issuer made a refresh token for USER")?;
    let config = docker_config_json(&json!({
        "auths": { setup.proxy.addr(): { "identitytoken": refresh } }
    }))?;
    let base = setup.proxy.reference("a/base:latest");
    // Only what kiln asked: skopeo (base push, inspection) uses the issuer too.
    let before = issuer.requests().len();
    let out = setup.build(&two_stage(&base), "b/app:latest", config.path(), &[])?;
    let requests = issuer.requests().split_off(before);
    out.ensure_success()?;
    assert_no_secret(&out, &[&refresh]);
    assert_eq!(
        setup
            .registry
            .image("b/app:latest")
            .flatten()?
            .read("/final")?,
        "final\n"
    );
    assert!(
        requests
            .iter()
            .any(|r| r.grant == "refresh_token" && r.status == 200),
        "kiln never used the refresh token: {requests:?}"
    );
    assert!(
        requests.iter().all(|r| r.grant != "basic"),
        "kiln sent basic credentials it does not have: {requests:?}"
    );
    Ok(())
}
