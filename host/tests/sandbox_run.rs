//! RUN in a real sandbox over a real overlay, through the kiln binary as the
//! helper. Needs root (CI runs as root) and busybox-static.

use kiln::sandbox::{self, Network, RunSpec, SandboxError, overlay};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

const BUSYBOX: &str = "/bin/busybox";
const APPLETS: [&str; 8] = ["sh", "cat", "hostname", "id", "ip", "ls", "pwd", "sleep"];
const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:App:/home/app:/bin/sh\n";
const GROUP: &str = "root:x:0:\napp:x:1000:\nextra:x:2000:app\n";

struct Fixture {
    _dir: tempfile::TempDir,
    lower: PathBuf,
    upper: PathBuf,
    work: PathBuf,
    merged: PathBuf,
}

/// A busybox image as the only lower layer, with empty upper and work dirs.
fn fixture() -> Fixture {
    assert!(
        Path::new(BUSYBOX).is_file(),
        "{BUSYBOX} is missing: install it with `apt-get install -y busybox-static` to run the sandbox tests"
    );
    // The namespace is this test thread's, so its mounts vanish with it.
    sandbox::enter_private_mount_namespace().expect("the sandbox tests need root");
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let lower = dir.path().join("lower");
    for d in ["bin", "etc", "tmp"] {
        fs::create_dir_all(lower.join(d)).unwrap();
    }
    // A hard link, not a copy: a freshly written executable can fail with
    // ETXTBSY while another test thread forks with its descriptor open.
    if fs::hard_link(BUSYBOX, lower.join("bin/busybox")).is_err() {
        fs::copy(BUSYBOX, lower.join("bin/busybox")).unwrap();
    }
    for applet in APPLETS {
        std::os::unix::fs::symlink("busybox", lower.join("bin").join(applet)).unwrap();
    }
    fs::write(lower.join("etc/passwd"), PASSWD).unwrap();
    fs::write(lower.join("etc/group"), GROUP).unwrap();
    fs::set_permissions(&lower, fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(lower.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
    let (upper, work, merged) = (
        dir.path().join("upper"),
        dir.path().join("work"),
        dir.path().join("merged"),
    );
    for d in [&upper, &work, &merged] {
        fs::create_dir(d).unwrap();
    }
    Fixture {
        _dir: dir,
        lower,
        upper,
        work,
        merged,
    }
}

fn spec(f: &Fixture, script: &str) -> RunSpec {
    RunSpec {
        init_exe: env!("CARGO_BIN_EXE_kiln").into(),
        rootfs: f.merged.clone(),
        argv: vec![
            "/bin/busybox".into(),
            "sh".into(),
            "-c".into(),
            script.into(),
        ],
        env: vec!["PATH=/bin".into()],
        cwd: "/".into(),
        user: None,
        hostname: "kiln-test".into(),
        network: Network::Host,
    }
}

/// Runs `spec` over the fixture's overlay, unmounted again before returning.
fn run(f: &Fixture, spec: &RunSpec) -> Result<i32, SandboxError> {
    let mount = overlay::mount_overlay(&[&f.lower], &f.upper, &f.work, &f.merged).unwrap();
    let result = sandbox::run(spec);
    mount.unmount().unwrap();
    result
}

fn upper_file(f: &Fixture, rel: &str) -> String {
    fs::read_to_string(f.upper.join(rel)).unwrap_or_else(|e| panic!("{rel} in the upper dir: {e}"))
}

#[test]
fn command_runs_as_pid_1_and_only_its_changes_reach_the_upper_dir() {
    let f = fixture();
    let script = "echo hi > /out; echo $$ > /pid; hostname > /host; cat > /stdin; echo x > /dev/null; \
                  cat /etc/resolv.conf > /resolv; \
                  if echo x 2>/dev/null >> /etc/hosts; then echo writable; else echo read-only; fi > /hosts; \
                  exit 3";
    assert_eq!(run(&f, &spec(&f, script)).unwrap(), 3);
    assert_eq!(
        upper_file(&f, "resolv"),
        fs::read_to_string("/etc/resolv.conf").unwrap_or_default()
    );
    let hosts_mode = if Path::new("/etc/hosts").is_file() {
        "read-only\n"
    } else {
        "writable\n"
    };
    assert_eq!(upper_file(&f, "hosts"), hosts_mode);
    assert_eq!(upper_file(&f, "out"), "hi\n");
    assert_eq!(upper_file(&f, "pid"), "1\n");
    assert_eq!(upper_file(&f, "host"), "kiln-test\n");
    assert_eq!(upper_file(&f, "stdin"), "");
    for leftover in ["proc", "dev", "etc/resolv.conf", "etc/hosts"] {
        assert!(
            !f.upper.join(leftover).exists(),
            "{leftover} was left in the upper dir"
        );
    }
    let mut entries: Vec<String> = fs::read_dir(&f.upper)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    entries.sort();
    entries.retain(|e| e != "etc");
    assert_eq!(entries, ["host", "hosts", "out", "pid", "resolv", "stdin"]);
    // Binding /etc/hosts copied /etc up; it must look exactly like the lower one.
    if f.upper.join("etc").exists() {
        assert_eq!(fs::read_dir(f.upper.join("etc")).unwrap().count(), 0);
        let (up, low) = (
            fs::metadata(f.upper.join("etc")).unwrap(),
            fs::metadata(f.lower.join("etc")).unwrap(),
        );
        assert_eq!(
            (up.mtime(), up.mtime_nsec()),
            (low.mtime(), low.mtime_nsec())
        );
    }
}

#[test]
fn user_from_passwd_gets_its_ids_groups_and_home() {
    let f = fixture();
    let script = "id -u > /tmp/out; id -g >> /tmp/out; id -G >> /tmp/out; echo $HOME >> /tmp/out";
    let spec = RunSpec {
        user: Some("app".into()),
        ..spec(&f, script)
    };
    assert_eq!(run(&f, &spec).unwrap(), 0);
    assert_eq!(
        upper_file(&f, "tmp/out"),
        "1000\n1000\n1000 2000\n/home/app\n"
    );
}

#[test]
fn numeric_user_and_group_need_no_passwd_entry() {
    let f = fixture();
    let spec = RunSpec {
        user: Some("4242:4343".into()),
        ..spec(
            &f,
            "id -u > /tmp/out; id -g >> /tmp/out; echo $HOME >> /tmp/out",
        )
    };
    assert_eq!(run(&f, &spec).unwrap(), 0);
    assert_eq!(upper_file(&f, "tmp/out"), "4242\n4343\n/\n");
}

#[test]
fn unknown_user_fails_like_docker() {
    let f = fixture();
    let spec = RunSpec {
        user: Some("nobody".into()),
        ..spec(&f, "true")
    };
    let e = run(&f, &spec).unwrap_err();
    assert_eq!(
        e.to_string(),
        "unable to find user nobody: no matching entries in passwd file"
    );
    assert_eq!(fs::read_dir(&f.upper).unwrap().count(), 0);
}

#[test]
fn missing_command_exits_127() {
    let f = fixture();
    let spec = RunSpec {
        argv: vec!["no-such-command".into()],
        ..spec(&f, "")
    };
    assert_eq!(run(&f, &spec).unwrap(), 127);
}

#[test]
fn missing_working_directory_is_created() {
    let f = fixture();
    let spec = RunSpec {
        cwd: "/work/sub".into(),
        ..spec(&f, "pwd > /tmp/pwd")
    };
    assert_eq!(run(&f, &spec).unwrap(), 0);
    assert_eq!(upper_file(&f, "tmp/pwd"), "/work/sub\n");
    assert_eq!(
        fs::metadata(f.upper.join("work/sub"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o755
    );
}

#[test]
fn network_none_has_only_loopback_and_it_is_up() {
    let f = fixture();
    let script = "cat /proc/net/dev > /tmp/dev; ip link show lo > /tmp/lo";
    let spec = RunSpec {
        network: Network::None,
        ..spec(&f, script)
    };
    assert_eq!(run(&f, &spec).unwrap(), 0);
    let interfaces: Vec<String> = upper_file(&f, "tmp/dev")
        .lines()
        .skip(2)
        .map(|l| l.split(':').next().unwrap().trim().to_owned())
        .collect();
    assert_eq!(interfaces, ["lo"]);
    assert!(
        upper_file(&f, "tmp/lo").contains(",UP"),
        "{}",
        upper_file(&f, "tmp/lo")
    );
}

#[test]
fn overlay_without_lowers_is_the_upper_dir() {
    let f = fixture();
    fs::write(f.upper.join("file"), "x").unwrap();
    let mount = overlay::mount_overlay(&[], &f.upper, &f.work, &f.merged).unwrap();
    assert_eq!(fs::read_to_string(f.merged.join("file")).unwrap(), "x");
    fs::write(f.merged.join("new"), "y").unwrap();
    drop(mount);
    assert_eq!(fs::read_to_string(f.upper.join("new")).unwrap(), "y");
    assert!(!f.merged.join("file").exists());
}
