//! A custom instruction handled by a user's plugin: the TEMPLATE example.

use anyhow::Result;
use kiln_e2e::{BaseImage, BuildContext, Registry, plugin_path, run_kiln};

#[test]
fn template_plugin_renders_build_args() -> Result<()> {
    let plugin = plugin_path("template")?;
    let registry = Registry::start()?;
    let base = BaseImage::busybox()?.push(&registry, "library/busybox:latest")?;
    let context = BuildContext::with_dockerfile(&format!(
        "FROM {base}\nARG NAME=world\nTEMPLATE greeting.tmpl /etc/greeting\n"
    ))?;
    context.write("greeting.tmpl", "Hello {{NAME}}!")?;

    let out = run_kiln(
        [
            "build",
            "--context",
            &context.path().display().to_string(),
            "--destination",
            &registry.reference("greeting:latest"),
            "--insecure-registry",
            &registry.addr(),
            "--build-arg",
            "NAME=kiln",
            "--plugin",
            &plugin.display().to_string(),
        ],
        &[],
    )?;
    out.ensure_success()?;

    let root = registry.image("greeting:latest").flatten()?;
    assert_eq!(root.read("/etc/greeting")?, "Hello kiln!");
    Ok(())
}
