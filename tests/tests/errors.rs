//! Failures say what failed and where, and a failing RUN's exit code becomes
//! kiln's.

use anyhow::Result;
use kiln_e2e::{BaseImage, BuildContext, KilnOutput, Registry, run_kiln};

/// Builds `context` without pushing, trusting `registry` over plain HTTP.
fn build(context: &BuildContext, registry: &str) -> Result<KilnOutput> {
    run_kiln(
        [
            "build",
            "--context",
            &context.path().display().to_string(),
            "--no-push",
            "--insecure-registry",
            registry,
        ],
        &[],
    )
}

#[test]
fn missing_dockerfile_is_named() -> Result<()> {
    let context = BuildContext::new()?;
    let dockerfile = context.path().join("nope.Dockerfile");
    let out = run_kiln(
        [
            "build",
            "--context",
            &context.path().display().to_string(),
            "--dockerfile",
            &dockerfile.display().to_string(),
            "--no-push",
        ],
        &[],
    )?;
    out.ensure_failure()?;
    assert!(out.stderr.contains("nope.Dockerfile"), "{}", out.stderr);
    Ok(())
}

#[test]
fn unknown_instruction_names_keyword_and_line() -> Result<()> {
    let context = BuildContext::with_dockerfile("FROM scratch\nFROBNICATE x\n")?;
    let out = build(&context, "127.0.0.1:1")?;
    out.ensure_failure()?;
    assert!(out.stderr.contains("FROBNICATE"), "{}", out.stderr);
    // Either BuildKit's "line 2" or the compiler-style "Dockerfile:2".
    assert!(
        out.stderr.contains("line 2") || out.stderr.contains("Dockerfile:2"),
        "{}",
        out.stderr
    );
    Ok(())
}

#[test]
fn failing_run_exit_code_is_kilns() -> Result<()> {
    let registry = Registry::start()?;
    let base = BaseImage::busybox()?.push(&registry, "library/busybox:latest")?;
    let context = BuildContext::with_dockerfile(&format!("FROM {base}\nRUN exit 3\n"))?;
    let out = build(&context, &registry.addr())?;
    assert_eq!(out.code(), Some(3), "{}", out.stderr);
    Ok(())
}

#[test]
fn unreachable_registry_is_reported() -> Result<()> {
    let context = BuildContext::with_dockerfile("FROM 127.0.0.1:1/nothing\n")?;
    let out = build(&context, "127.0.0.1:1")?;
    out.ensure_failure()?;
    let stderr = out.stderr.to_lowercase();
    assert!(stderr.contains("127.0.0.1:1"), "{}", out.stderr);
    assert!(
        [
            "cannot reach",
            "could not reach",
            "connection refused",
            "cannot connect"
        ]
        .iter()
        .any(|phrase| stderr.contains(phrase)),
        "{}",
        out.stderr
    );
    Ok(())
}

#[test]
fn missing_base_image_is_not_found() -> Result<()> {
    let registry = Registry::start()?;
    let missing = registry.reference("library/nothing:latest");
    let context = BuildContext::with_dockerfile(&format!("FROM {missing}\n"))?;
    let out = build(&context, &registry.addr())?;
    out.ensure_failure()?;
    assert!(
        out.stderr.to_lowercase().contains("not found"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("library/nothing"), "{}", out.stderr);
    Ok(())
}

#[test]
fn a_destination_that_refuses_pushes_stops_the_build_before_its_first_run() -> Result<()> {
    let registry = Registry::start()?;
    let base = BaseImage::busybox()?.push(&registry, "library/busybox:latest")?;
    let context = BuildContext::with_dockerfile(&format!(
        "FROM {base}\nLABEL checked=while-starting\nRUN echo must-not-run\n"
    ))?;
    let out = run_kiln(
        [
            "build",
            "--context",
            &context.path().display().to_string(),
            "--destination",
            "127.0.0.1:1/nowhere:latest",
            "--insecure-registry",
            &registry.addr(),
            "--insecure-registry",
            "127.0.0.1:1",
            "--push-retry",
            "0",
        ],
        &[],
    )?;
    out.ensure_failure()?;
    assert!(out.stderr.contains("127.0.0.1:1"), "{}", out.stderr);
    assert!(!out.all().contains("Running:"), "{}", out.all());
    Ok(())
}
