//! RUN in a real sandbox over a real overlay, through the kiln binary as the
//! helper. Needs root (CI runs as root) and busybox-static.

use kiln::sandbox::{
    self, Capabilities, MountSource, MountSpec, Network, RunSpec, SandboxError, overlay,
};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

const BUSYBOX: &str = "/bin/busybox";
const APPLETS: [&str; 11] = [
    "sh", "cat", "grep", "hostname", "id", "ip", "ls", "pwd", "sleep", "stat", "touch",
];
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
        mounts: vec![],
        capabilities: Capabilities::Default,
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

fn mount(target: &str, source: MountSource) -> MountSpec {
    MountSpec {
        target: target.into(),
        source,
    }
}

/// Every path in `dir`, relative and sorted.
fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            out.push(p.strip_prefix(dir).unwrap().to_string_lossy().into_owned());
            if p.symlink_metadata().unwrap().is_dir() {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

/// The image gets its own name service files so that binding the host's
/// leaves no copied-up `/etc` behind, and any upper entry is the mounts'.
fn with_etc_files(f: &Fixture) {
    for name in ["hosts", "resolv.conf"] {
        fs::write(f.lower.join("etc").join(name), "").unwrap();
    }
}

fn host_dir(f: &Fixture, name: &str) -> PathBuf {
    let p = f._dir.path().join(name);
    fs::create_dir(&p).unwrap();
    p
}

#[test]
fn read_only_bind_refuses_writes_and_leaves_no_mount_point() {
    let f = fixture();
    let src = host_dir(&f, "src");
    fs::write(src.join("f"), "from host\n").unwrap();
    let script = "cat /mnt/src/f > /tmp/out; \
                  if touch /mnt/src/new 2> /tmp/err; then echo wrote; else echo refused; fi >> /tmp/out";
    let spec = RunSpec {
        mounts: vec![mount(
            "/mnt/src",
            MountSource::Bind {
                source: src.clone(),
                writable: false,
            },
        )],
        ..spec(&f, script)
    };
    assert_eq!(run(&f, &spec).unwrap(), 0);
    assert_eq!(upper_file(&f, "tmp/out"), "from host\nrefused\n");
    assert!(
        upper_file(&f, "tmp/err").contains("Read-only file system"),
        "{}",
        upper_file(&f, "tmp/err")
    );
    assert!(!src.join("new").exists());
    assert!(!f.upper.join("mnt").exists(), "{:?}", tree(&f.upper));
}

#[test]
fn writable_bind_takes_writes_that_are_thrown_away() {
    let f = fixture();
    let src = host_dir(&f, "src");
    fs::write(src.join("f"), "original\n").unwrap();
    let script = "echo changed > /src/f && echo new > /src/new && cat /src/f /src/new > /tmp/seen";
    let spec = RunSpec {
        mounts: vec![mount(
            "/src",
            MountSource::Bind {
                source: src.clone(),
                writable: true,
            },
        )],
        ..spec(&f, script)
    };
    assert_eq!(run(&f, &spec).unwrap(), 0);
    assert_eq!(upper_file(&f, "tmp/seen"), "changed\nnew\n");
    assert_eq!(fs::read_to_string(src.join("f")).unwrap(), "original\n");
    assert!(!src.join("new").exists());
    assert!(!f.upper.join("src").exists());
    let scratch: Vec<_> = fs::read_dir(f._dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with(".kiln-run-"))
        .collect();
    assert!(scratch.is_empty(), "scratch left: {scratch:?}");
}

#[test]
fn writable_bind_of_a_file_is_a_throwaway_copy() {
    let f = fixture();
    let src = host_dir(&f, "src");
    fs::write(src.join("f"), "original\n").unwrap();
    let spec = RunSpec {
        mounts: vec![mount(
            "/etc/app.conf",
            MountSource::Bind {
                source: src.join("f"),
                writable: true,
            },
        )],
        ..spec(
            &f,
            "echo more >> /etc/app.conf && cat /etc/app.conf > /tmp/seen",
        )
    };
    assert_eq!(run(&f, &spec).unwrap(), 0);
    assert_eq!(upper_file(&f, "tmp/seen"), "original\nmore\n");
    assert_eq!(fs::read_to_string(src.join("f")).unwrap(), "original\n");
    assert!(!f.upper.join("etc/app.conf").exists());
}

#[test]
fn cache_persists_between_runs_and_stays_out_of_the_layer() {
    let f = fixture();
    let cache = host_dir(&f, "cache");
    let with_cache = |script: &str, read_only: bool| RunSpec {
        mounts: vec![mount(
            "/root/.cache/tool",
            MountSource::Cache {
                dir: cache.clone(),
                read_only,
            },
        )],
        ..spec(&f, script)
    };
    assert_eq!(
        run(
            &f,
            &with_cache("echo warm > /root/.cache/tool/entry", false)
        )
        .unwrap(),
        0
    );
    assert_eq!(fs::read_to_string(cache.join("entry")).unwrap(), "warm\n");
    let script = "cat /root/.cache/tool/entry > /tmp/out; \
                  if touch /root/.cache/tool/x 2>/dev/null; then echo rw; else echo ro; fi >> /tmp/out";
    assert_eq!(run(&f, &with_cache(script, true)).unwrap(), 0);
    assert_eq!(upper_file(&f, "tmp/out"), "warm\nro\n");
    assert!(!f.upper.join("root").exists(), "{:?}", tree(&f.upper));
}

#[test]
fn tmpfs_is_empty_sized_and_gone_afterwards() {
    let f = fixture();
    let script =
        "ls -A /scratch > /tmp/ls; echo x > /scratch/f; grep ' /scratch ' /proc/mounts > /tmp/mnt";
    let spec = RunSpec {
        mounts: vec![mount(
            "/scratch",
            MountSource::Tmpfs {
                size: Some(1 << 20),
            },
        )],
        ..spec(&f, script)
    };
    assert_eq!(run(&f, &spec).unwrap(), 0);
    assert_eq!(upper_file(&f, "tmp/ls"), "");
    let mnt = upper_file(&f, "tmp/mnt");
    assert!(mnt.starts_with("tmpfs /scratch tmpfs "), "{mnt}");
    assert!(
        mnt.contains("size=1024k") && mnt.contains("nosuid"),
        "{mnt}"
    );
    assert!(!f.upper.join("scratch").exists());
}

#[test]
fn secret_is_read_only_with_its_mode_and_owner_and_leaves_nothing() {
    let f = fixture();
    with_etc_files(&f);
    let secret = f._dir.path().join("token");
    fs::write(&secret, "s3cr3t").unwrap();
    let script = "stat -c '%a %u %g' /run/secrets/token > /tmp/stat; cat /run/secrets/token >> /tmp/stat; \
                  if echo x 2>/dev/null > /run/secrets/token; then echo writable; else echo read-only; fi >> /tmp/stat; \
                  ls -A /dev > /tmp/dev";
    let spec = RunSpec {
        mounts: vec![mount(
            "/run/secrets/token",
            MountSource::Secret {
                file: secret.clone(),
                mode: 0o400,
                uid: 1000,
                gid: 2000,
            },
        )],
        ..spec(&f, script)
    };
    assert_eq!(run(&f, &spec).unwrap(), 0);
    assert_eq!(
        upper_file(&f, "tmp/stat"),
        "400 1000 2000\ns3cr3tread-only\n"
    );
    assert!(
        !upper_file(&f, "tmp/dev").contains("kiln"),
        "staged secret visible"
    );
    assert_eq!(fs::read_to_string(&secret).unwrap(), "s3cr3t");
    assert_eq!(tree(&f.upper), ["tmp", "tmp/dev", "tmp/stat"]);
}

#[test]
fn ssh_agent_socket_is_a_socket_with_its_mode_and_owner() {
    let f = fixture();
    let agent = f._dir.path().join("agent.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&agent).unwrap();
    let target = "/run/buildkit/ssh_agent.0";
    let script = format!(
        "if test -S {target}; then echo socket; else echo missing; fi > /tmp/out; \
         stat -c '%a %u %g' {target} >> /tmp/out"
    );
    let spec = RunSpec {
        mounts: vec![mount(
            target,
            MountSource::Ssh {
                socket: agent,
                mode: 0o600,
                uid: 1000,
                gid: 1000,
            },
        )],
        ..spec(&f, &script)
    };
    assert_eq!(run(&f, &spec).unwrap(), 0);
    assert_eq!(upper_file(&f, "tmp/out"), "socket\n600 1000 1000\n");
    assert!(!f.upper.join("run").exists());
}

#[test]
fn mount_only_step_leaves_the_upper_dir_empty() {
    let f = fixture();
    with_etc_files(&f);
    let (src, cache) = (host_dir(&f, "src"), host_dir(&f, "cache"));
    fs::write(src.join("f"), "x").unwrap();
    let secret = f._dir.path().join("secret");
    fs::write(&secret, "s").unwrap();
    let agent = f._dir.path().join("agent.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&agent).unwrap();
    let spec = RunSpec {
        mounts: vec![
            // Children listed before parents, to check the ordering.
            mount(
                "/var/cache/app/nested/tmp",
                MountSource::Tmpfs { size: None },
            ),
            mount(
                "/var/cache/app",
                MountSource::Cache {
                    dir: cache.clone(),
                    read_only: false,
                },
            ),
            mount(
                "/run/secrets/s",
                MountSource::Secret {
                    file: secret,
                    mode: 0o400,
                    uid: 0,
                    gid: 0,
                },
            ),
            mount(
                "/run/buildkit/ssh_agent.0",
                MountSource::Ssh {
                    socket: agent,
                    mode: 0o600,
                    uid: 0,
                    gid: 0,
                },
            ),
            mount(
                "/src",
                MountSource::Bind {
                    source: src.clone(),
                    writable: true,
                },
            ),
            mount(
                "/ro/file",
                MountSource::Bind {
                    source: src.join("f"),
                    writable: false,
                },
            ),
            mount("/t/u", MountSource::Tmpfs { size: None }),
        ],
        ..spec(
            &f,
            "test -d /var/cache/app/nested/tmp && test -f /run/secrets/s && test -S /run/buildkit/ssh_agent.0",
        )
    };
    assert_eq!(run(&f, &spec).unwrap(), 0);
    assert_eq!(tree(&f.upper), Vec::<String>::new());
    // The nested mount point was made inside the cache, as BuildKit does.
    assert_eq!(tree(&cache), ["nested", "nested/tmp"]);
    assert_eq!(tree(&src), ["f"]);
}

#[test]
fn mount_points_under_existing_directories_restore_their_times() {
    let f = fixture();
    with_etc_files(&f);
    fs::create_dir(f.lower.join("run")).unwrap();
    let secret = f._dir.path().join("secret");
    fs::write(&secret, "s").unwrap();
    let spec = RunSpec {
        mounts: vec![mount(
            "/run/secrets/s",
            MountSource::Secret {
                file: secret,
                mode: 0o400,
                uid: 0,
                gid: 0,
            },
        )],
        ..spec(&f, "cat /run/secrets/s")
    };
    assert_eq!(run(&f, &spec).unwrap(), 0);
    // Overlayfs copied /run up to create /run/secrets in it; what is left
    // must match the lower one so that the snapshot prunes it.
    assert_eq!(tree(&f.upper), ["run"]);
    let (up, low) = (
        fs::metadata(f.upper.join("run")).unwrap(),
        fs::metadata(f.lower.join("run")).unwrap(),
    );
    assert_eq!(
        (up.mtime(), up.mtime_nsec(), up.mode()),
        (low.mtime(), low.mtime_nsec(), low.mode())
    );
}

#[test]
fn mount_target_through_a_symlink_stays_in_the_image() {
    let f = fixture();
    with_etc_files(&f);
    // An absolute symlink must resolve inside the image, not on the host.
    std::os::unix::fs::symlink("/opt/real", f.lower.join("link")).unwrap();
    let spec = RunSpec {
        mounts: vec![mount("/link/cache", MountSource::Tmpfs { size: None })],
        ..spec(&f, "grep -c ' /opt/real/cache ' /proc/mounts > /tmp/n")
    };
    let e = run(&f, &spec).unwrap_err().to_string();
    assert!(e.contains("/link is a symlink to a missing path"), "{e}");
    assert_eq!(tree(&f.upper), Vec::<String>::new());

    fs::create_dir_all(f.lower.join("opt/real")).unwrap();
    assert_eq!(run(&f, &spec).unwrap(), 0);
    assert_eq!(upper_file(&f, "tmp/n"), "1\n");
    assert!(!Path::new("/opt/real").exists());
    // Only the copied-up parents are left, unchanged, for the snapshot to prune.
    assert_eq!(tree(&f.upper), ["opt", "opt/real", "tmp", "tmp/n"]);
    let (up, low) = (
        fs::metadata(f.upper.join("opt/real")).unwrap(),
        fs::metadata(f.lower.join("opt/real")).unwrap(),
    );
    assert_eq!(
        (up.mtime(), up.mtime_nsec()),
        (low.mtime(), low.mtime_nsec())
    );
}

/// `CapXxx:` values from a `/proc/<pid>/status` text.
fn caps(status: &str) -> Vec<(String, String)> {
    status
        .lines()
        .filter(|l| l.starts_with("Cap") || l.starts_with("NoNewPrivs"))
        .map(|l| {
            let (k, v) = l.split_once(':').unwrap();
            (k.to_owned(), v.trim().to_owned())
        })
        .collect()
}

fn cap(status: &str, key: &str) -> String {
    caps(status)
        .into_iter()
        .find(|(k, _)| k == key)
        .unwrap_or_else(|| panic!("{key} missing in {status}"))
        .1
}

#[test]
fn default_capabilities_are_dockers_for_root() {
    let f = fixture();
    assert_eq!(
        run(&f, &spec(&f, "cat /proc/self/status > /tmp/status")).unwrap(),
        0
    );
    let status = upper_file(&f, "tmp/status");
    for key in ["CapEff", "CapPrm", "CapBnd"] {
        assert_eq!(cap(&status, key), "00000000a80425fb", "{key}");
    }
    assert_eq!(cap(&status, "CapInh"), "0000000000000000");
    assert_eq!(cap(&status, "CapAmb"), "0000000000000000");
    // Left off so that setuid programs such as su work, as in Docker.
    assert_eq!(cap(&status, "NoNewPrivs"), "0");
}

#[test]
fn non_root_user_has_no_effective_capabilities_but_the_default_bound() {
    let f = fixture();
    let spec = RunSpec {
        user: Some("app".into()),
        ..spec(&f, "cat /proc/self/status > /tmp/status")
    };
    assert_eq!(run(&f, &spec).unwrap(), 0);
    let status = upper_file(&f, "tmp/status");
    assert_eq!(cap(&status, "CapEff"), "0000000000000000");
    assert_eq!(cap(&status, "CapPrm"), "0000000000000000");
    assert_eq!(cap(&status, "CapBnd"), "00000000a80425fb");
    assert_eq!(cap(&status, "NoNewPrivs"), "0");
}

#[test]
fn insecure_keeps_every_capability_kiln_has() {
    let f = fixture();
    let spec = RunSpec {
        capabilities: Capabilities::All,
        ..spec(&f, "cat /proc/self/status > /tmp/status")
    };
    assert_eq!(run(&f, &spec).unwrap(), 0);
    let status = upper_file(&f, "tmp/status");
    let host = fs::read_to_string("/proc/self/status").unwrap();
    for key in ["CapEff", "CapBnd"] {
        assert_eq!(cap(&status, key), cap(&host, key), "{key}");
    }
}

#[test]
fn command_sees_only_stdin_stdout_and_stderr() {
    let f = fixture();
    // A descriptor without close-on-exec, as a careless library might leave.
    let leaked = fs::File::open("/proc/self/status").unwrap();
    // SAFETY: dup of an open descriptor; the copy is closed below.
    let fd = unsafe { libc::dup(std::os::fd::AsRawFd::as_raw_fd(&leaked)) };
    assert!(fd > 2);
    let result = run(&f, &spec(&f, "ls /proc/self/fd > /tmp/fds"));
    // SAFETY: `fd` is ours and used nowhere else.
    unsafe { libc::close(fd) };
    assert_eq!(result.unwrap(), 0);
    // 3 is the directory that ls itself opened to list.
    assert_eq!(upper_file(&f, "tmp/fds"), "0\n1\n2\n3\n");
}

#[test]
fn bad_mounts_fail_before_anything_runs() {
    let f = fixture();
    let spec = RunSpec {
        mounts: vec![mount(
            "/x",
            MountSource::Bind {
                source: f._dir.path().join("missing"),
                writable: false,
            },
        )],
        ..spec(&f, "touch /ran")
    };
    let e = run(&f, &spec).unwrap_err().to_string();
    assert!(e.contains("missing of mount /x"), "{e}");
    assert_eq!(tree(&f.upper), Vec::<String>::new());
}
