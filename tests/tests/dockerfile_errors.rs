//! Issue 3's error contract: a bad Dockerfile fails the build with a non-zero
//! exit and a message that starts where the mistake is, compiler-style:
//! `PATH:LINE:COLUMN: ...`, with what is wrong.

use anyhow::Result;
use kiln_e2e::{BuildContext, FileServer, KilnOutput, run_kiln};
use sha2::{Digest, Sha256};

/// Builds `dockerfile` (with `files` beside it in the context) without
/// pushing; every case here fails before a registry would be needed.
fn build(dockerfile: &str, files: &[(&str, &str)]) -> Result<(BuildContext, KilnOutput)> {
    let context = BuildContext::with_dockerfile(dockerfile)?;
    for (path, contents) in files {
        context.write(path, contents)?;
    }
    let out = run_kiln(
        [
            "build",
            "--context",
            &context.path().display().to_string(),
            "--no-push",
        ],
        &[],
    )?;
    Ok((context, out))
}

/// Checks that kiln failed and that its log holds `<Dockerfile>:LINE:COLUMN:`
/// with a positive column, followed on that line by every one of `words`.
fn assert_located(context: &BuildContext, out: &KilnOutput, line: usize, words: &[&str]) {
    assert!(
        out.ensure_failure().is_ok(),
        "kiln accepted a bad Dockerfile:\n{}",
        out.all()
    );
    let prefix = format!("{}:{line}:", context.path().join("Dockerfile").display());
    let located = out.all().lines().find_map(|log_line| {
        let (_, rest) = log_line.split_once(&prefix)?;
        let (column, message) = rest.split_once(':')?;
        let column: usize = column.parse().ok()?;
        (column > 0).then(|| message.to_owned())
    });
    let Some(message) = located else {
        panic!("no `{prefix}COLUMN:` in kiln's log:\n{}", out.all());
    };
    for word in words {
        assert!(
            message.to_lowercase().contains(&word.to_lowercase()),
            "the message after `{prefix}COLUMN:` does not say {word:?}: {message}"
        );
    }
}

#[test]
fn syntax_error_unterminated_quote() -> Result<()> {
    let (context, out) = build("FROM scratch\nLABEL a=b\nENV A=\"unterminated\n", &[])?;
    assert_located(&context, &out, 3, &["quote"]);
    Ok(())
}

#[test]
fn syntax_error_unterminated_heredoc() -> Result<()> {
    let (context, out) = build("FROM scratch\nCOPY <<EOF /x\nno end marker\n", &[])?;
    assert_located(&context, &out, 2, &["EOF"]);
    Ok(())
}

#[test]
fn unknown_flag_is_named() -> Result<()> {
    let (context, out) = build("FROM scratch\n\nCOPY --bogus=1 a /a\n", &[("a", "a\n")])?;
    assert_located(&context, &out, 3, &["--bogus"]);
    Ok(())
}

#[test]
fn bad_chmod_is_named() -> Result<()> {
    let (context, out) = build(
        "FROM scratch\nCOPY a /a\nCOPY --chmod=888 a /b\n",
        &[("a", "a\n")],
    )?;
    assert_located(&context, &out, 3, &["888"]);
    Ok(())
}

#[test]
fn missing_stage_in_copy_from_is_named() -> Result<()> {
    let (context, out) = build(
        "FROM scratch AS first\nCOPY a /a\nFROM scratch\nCOPY --from=5 /a /a\n",
        &[("a", "a\n")],
    )?;
    assert_located(&context, &out, 4, &["5"]);
    Ok(())
}

#[test]
fn add_checksum_mismatch_is_named() -> Result<()> {
    let served = tempfile::tempdir()?;
    std::fs::write(served.path().join("payload"), "the real payload\n")?;
    let server = FileServer::start(served.path())?;
    let wrong = hex::encode(Sha256::digest(b"something else\n"));
    let (context, out) = build(
        &format!(
            "FROM scratch\nADD --checksum=sha256:{wrong} {}/payload /payload\n",
            server.url()
        ),
        &[],
    )?;
    assert_located(&context, &out, 2, &[]);
    let log = out.all().to_lowercase();
    assert!(
        log.contains("checksum") || log.contains("digest"),
        "the failure does not say that the checksum did not match:\n{}",
        out.all()
    );
    assert!(
        log.contains(&wrong),
        "the failure does not name the expected checksum:\n{}",
        out.all()
    );
    // The file was served: the failure is the mismatch, not the download.
    assert!(!log.contains("404"), "{}", out.all());
    Ok(())
}
