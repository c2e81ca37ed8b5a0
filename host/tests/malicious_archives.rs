//! A corpus of hostile layer tars, built here with raw headers so names the
//! `tar` crate's safe API refuses can be written. Each one is unpacked into
//! a fresh root inside a fresh "host" directory, in both whiteout modes:
//! nothing outside the root may change, nothing may panic, and each case
//! ends in exactly the expected way (a clean error naming the entry, or a
//! checked, contained extraction).

use kiln::layer::{UnpackOptions, Whiteouts, unpack};
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use tar::{EntryType, Header};

/// A tar written header by header, every field raw.
#[derive(Default)]
struct Tar(Vec<u8>);

impl Tar {
    fn header(name: &[u8], kind: EntryType, link: &[u8], size: u64) -> Header {
        let mut h = Header::new_gnu();
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
        h.set_entry_type(kind);
        h.set_mode(if kind == EntryType::Directory {
            0o755
        } else {
            0o644
        });
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_500_000_000);
        h.set_size(size);
        h.set_cksum();
        h
    }

    /// Appends `h` as is (its checksum is the caller's business) and `data`
    /// padded to a block.
    fn raw(&mut self, h: &Header, data: &[u8]) -> &mut Self {
        self.0.extend_from_slice(h.as_bytes());
        self.0.extend_from_slice(data);
        self.0.resize(self.0.len().next_multiple_of(512), 0);
        self
    }

    fn entry(&mut self, name: &str, kind: EntryType, link: &str, data: &[u8]) -> &mut Self {
        let h = Self::header(name.as_bytes(), kind, link.as_bytes(), data.len() as u64);
        self.raw(&h, data)
    }

    fn file(&mut self, name: &str, data: &[u8]) -> &mut Self {
        self.entry(name, EntryType::Regular, "", data)
    }

    fn dir(&mut self, name: &str) -> &mut Self {
        self.entry(name, EntryType::Directory, "", b"")
    }

    fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.entry(name, EntryType::Symlink, target, b"")
    }

    fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.entry(name, EntryType::Link, target, b"")
    }

    fn device(&mut self, name: &str, kind: EntryType, major: u32, minor: u32) -> &mut Self {
        let mut h = Self::header(name.as_bytes(), kind, b"", 0);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        h.set_cksum();
        self.raw(&h, b"")
    }

    fn pax(&mut self, records: &[(&str, &str)]) -> &mut Self {
        let mut body = Vec::new();
        for (k, v) in records {
            let rest = format!(" {k}={v}\n");
            let mut len = rest.len() + 1;
            while format!("{len}").len() + rest.len() != len {
                len += 1;
            }
            body.extend_from_slice(format!("{len}{rest}").as_bytes());
        }
        self.entry("PaxHeaders/x", EntryType::XHeader, "", &body)
    }

    /// A GNU `././@LongLink` entry: `L` for the next name, `K` for its link.
    fn gnu_long(&mut self, kind: EntryType, value: &str) -> &mut Self {
        let mut data = value.as_bytes().to_vec();
        data.push(0);
        self.entry("././@LongLink", kind, "", &data)
    }

    fn bytes(&self) -> Vec<u8> {
        let mut out = self.0.clone();
        out.extend_from_slice(&[0; 1024]);
        out
    }
}

/// Where a case runs: a host dir holding bait files and the root.
struct Ctx {
    host: PathBuf,
    root: PathBuf,
    /// A name no case may create anywhere but inside the root.
    mark: String,
}

impl Ctx {
    fn new() -> (tempfile::TempDir, Ctx) {
        let host = tempfile::tempdir().unwrap();
        let h = host.path();
        fs::write(h.join("bait"), b"original").unwrap();
        fs::create_dir(h.join("etc")).unwrap();
        fs::write(h.join("etc/passwd"), b"root:x:0:0").unwrap();
        std::os::unix::fs::symlink("/", h.join("hostlink")).unwrap();
        fs::create_dir(h.join("root")).unwrap();
        let ctx = Ctx {
            host: h.to_owned(),
            root: h.join("root"),
            mark: format!("kiln-corpus-{}", std::process::id()),
        };
        (host, ctx)
    }

    /// The host dir as an absolute tar name or link target.
    fn host_str(&self) -> &str {
        self.host.to_str().unwrap()
    }

    /// Where an absolute `path` lands inside the root.
    fn in_root(&self, path: &Path) -> PathBuf {
        self.root.join(path.strip_prefix("/").unwrap())
    }

    /// Everything in the host dir but the root: type, mode, owner, size,
    /// mtime, content or link target.
    fn snapshot(&self) -> BTreeMap<PathBuf, String> {
        fn walk(ctx: &Ctx, dir: &Path, out: &mut BTreeMap<PathBuf, String>) {
            for e in fs::read_dir(dir).unwrap() {
                let path = e.unwrap().path();
                if path == ctx.root {
                    continue;
                }
                let m = fs::symlink_metadata(&path).unwrap();
                let body = if m.file_type().is_symlink() {
                    format!("{:?}", fs::read_link(&path).unwrap())
                } else if m.is_file() {
                    format!("{:?}", fs::read(&path).unwrap())
                } else {
                    String::new()
                };
                let desc = format!(
                    "{:o} {}:{} {} {}.{} {body}",
                    m.mode(),
                    m.uid(),
                    m.gid(),
                    m.len(),
                    m.mtime(),
                    m.mtime_nsec()
                );
                out.insert(path.clone(), desc);
                if m.is_dir() {
                    walk(ctx, &path, out);
                }
            }
        }
        let mut out = BTreeMap::new();
        let m = fs::metadata(&self.host).unwrap();
        out.insert(
            self.host.clone(),
            format!("{}.{}", m.mtime(), m.mtime_nsec()),
        );
        walk(self, &self.host, &mut out);
        out
    }

    /// Panics if the marker name exists anywhere it could have escaped to.
    fn assert_no_marker_outside(&self) {
        for dir in [
            Path::new("/"),
            Path::new("/etc"),
            Path::new("/tmp"),
            self.host.parent().unwrap(),
            &self.host,
            &self.host.join("etc"),
        ] {
            let p = dir.join(&self.mark);
            assert!(fs::symlink_metadata(&p).is_err(), "{} escaped", p.display());
        }
    }
}

type Check = Box<dyn Fn(&Ctx)>;

/// How a case must end.
enum Expect {
    /// An error whose message contains every string (the entry name first).
    Err(Vec<String>),
    /// Success, then this check on the root.
    Safe(Check),
}

fn err(parts: &[&str]) -> Expect {
    Expect::Err(parts.iter().map(|s| (*s).to_owned()).collect())
}

/// An error naming `entry` (quoted, as messages show it) and saying `why`.
fn err_entry(entry: &str, why: &str) -> Expect {
    Expect::Err(vec![format!("{entry:?}"), why.to_owned()])
}

fn safe(check: impl Fn(&Ctx) + 'static) -> Expect {
    Expect::Safe(Box::new(check))
}

struct Case {
    tar: Vec<u8>,
    overlay: Expect,
    /// The outcome under `Whiteouts::Reject`, when it differs.
    reject: Option<Expect>,
}

fn case(t: &Tar, overlay: Expect) -> Case {
    Case {
        tar: t.bytes(),
        overlay,
        reject: None,
    }
}

fn file_is(path: &Path, content: &[u8]) {
    let m = fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(m.is_file(), "{} is not a file", path.display());
    assert_eq!(fs::read(path).unwrap(), content, "{}", path.display());
}

fn symlink_is(path: &Path, target: &str) {
    assert_eq!(
        fs::read_link(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
        Path::new(target)
    );
}

const WHITEOUT: &str = "is a whiteout, which is not allowed here";
const UNSAFE: &str = "has a '..' component";

type Builder = Box<dyn Fn(&Ctx) -> Case>;

fn corpus() -> Vec<(&'static str, Builder)> {
    let mut cases: Vec<(&'static str, Builder)> = Vec::new();
    let mut add = |name, b: Builder| cases.push((name, b));

    add(
        "dotdot prefix",
        Box::new(|c| {
            let name = format!("../{}", c.mark);
            case(Tar::default().file(&name, b"x"), err_entry(&name, UNSAFE))
        }),
    );
    add(
        "dotdot in the middle",
        Box::new(|c| {
            let name = format!("a/../../{}", c.mark);
            case(
                Tar::default().file("a/ok", b"").file(&name, b"x"),
                err_entry(&name, UNSAFE),
            )
        }),
    );
    add(
        "a bare .. directory",
        Box::new(|_| case(Tar::default().dir(".."), err_entry("..", UNSAFE))),
    );
    add(
        "dotdot directory entry",
        Box::new(|c| {
            let name = format!("./sub/../../{}/", c.mark);
            case(Tar::default().dir(&name), err_entry(&name, UNSAFE))
        }),
    );
    add(
        "absolute name of a host file",
        Box::new(|c| {
            let name = format!("{}/bait", c.host_str());
            let at = c.in_root(&c.host.join("bait"));
            case(
                Tar::default().file(&name, b"evil"),
                safe(move |_| file_is(&at, b"evil")),
            )
        }),
    );
    add(
        "absolute name in /etc",
        Box::new(|c| {
            let name = format!("/etc/{}", c.mark);
            case(
                Tar::default().file(&name, b"evil"),
                safe(|c| file_is(&c.root.join("etc").join(&c.mark), b"evil")),
            )
        }),
    );
    add(
        "symlink to / then a file through it",
        Box::new(|c| {
            let mut t = Tar::default();
            t.symlink("x", "/")
                .file(&format!("x/etc/{}", c.mark), b"evil");
            case(
                &t,
                safe(|c| {
                    symlink_is(&c.root.join("x"), "/");
                    file_is(&c.root.join("etc").join(&c.mark), b"evil");
                }),
            )
        }),
    );
    add(
        "symlink to ../.. then a file through it",
        Box::new(|c| {
            let mut t = Tar::default();
            t.symlink("x", "../..")
                .file(&format!("x/{}", c.mark), b"evil");
            case(&t, safe(|c| file_is(&c.root.join(&c.mark), b"evil")))
        }),
    );
    add(
        "symlink to the host dir then overwriting the bait",
        Box::new(|c| {
            let mut t = Tar::default();
            t.dir(&format!("{}/", c.host_str()))
                .symlink("x", c.host_str())
                .file("x/bait", b"evil");
            let at = c.in_root(&c.host.join("bait"));
            case(&t, safe(move |_| file_is(&at, b"evil")))
        }),
    );
    add(
        "symlink to the host dir then a file, no dir inside",
        Box::new(|c| {
            let mut t = Tar::default();
            t.symlink("x", c.host_str()).file("x/bait", b"evil");
            case(&t, err_entry("x/bait", "cannot create directory"))
        }),
    );
    add(
        "symlink chain to outside",
        Box::new(|c| {
            let mut t = Tar::default();
            t.symlink("a", "b")
                .symlink("b", "/c/..")
                .symlink("c", "../../..")
                .file(&format!("a/{}", c.mark), b"evil");
            case(&t, safe(|c| file_is(&c.root.join(&c.mark), b"evil")))
        }),
    );
    add(
        "symlink loop",
        Box::new(|_| {
            let mut t = Tar::default();
            t.symlink("l1", "l2")
                .symlink("l2", "/l1")
                .file("l1/f", b"x");
            case(&t, err_entry("l1/f", "symbolic links"))
        }),
    );
    add(
        "symlink to itself",
        Box::new(|_| {
            let mut t = Tar::default();
            t.symlink("l", "l").file("l/f", b"x");
            case(&t, err_entry("l/f", "symbolic links"))
        }),
    );
    add(
        "a file replacing a symlink to the bait",
        Box::new(|c| {
            let mut t = Tar::default();
            t.symlink("s", &format!("{}/bait", c.host_str()))
                .file("s", b"evil");
            case(&t, safe(|c| file_is(&c.root.join("s"), b"evil")))
        }),
    );
    add(
        "hardlink to an absolute host file",
        Box::new(|c| {
            let target = format!("{}/bait", c.host_str());
            case(
                Tar::default().hardlink("h", &target),
                err_entry("h", "is neither in this layer nor in any layer below it"),
            )
        }),
    );
    add(
        "hardlink to ../",
        Box::new(|_| {
            case(
                Tar::default().hardlink("h", "../bait"),
                err_entry("h", UNSAFE),
            )
        }),
    );
    add(
        "hardlink through a symlinked parent",
        Box::new(|c| {
            let mut t = Tar::default();
            t.symlink("x", c.host_str()).hardlink("h", "x/bait");
            case(&t, err_entry("h", "never resolved through symlinks"))
        }),
    );
    add(
        "hardlink to a symlink pointing outside",
        Box::new(|c| {
            let target = format!("{}/bait", c.host_str());
            let mut t = Tar::default();
            t.symlink("s", &target).hardlink("h", "s");
            case(
                &t,
                safe(move |c| {
                    symlink_is(&c.root.join("h"), &target);
                    let (s, h) = (c.root.join("s"), c.root.join("h"));
                    let ino = fs::symlink_metadata(&s).unwrap().ino();
                    assert_eq!(fs::symlink_metadata(&h).unwrap().ino(), ino);
                }),
            )
        }),
    );
    add(
        "hardlink to a dir symlink, then writing through it",
        Box::new(|c| {
            let mut t = Tar::default();
            t.symlink("s", "..")
                .hardlink("h", "s")
                .file(&format!("h/{}", c.mark), b"evil");
            case(&t, safe(|c| file_is(&c.root.join(&c.mark), b"evil")))
        }),
    );
    add(
        "hardlink to a directory",
        Box::new(|_| {
            let mut t = Tar::default();
            t.dir("d/").hardlink("h", "d");
            case(&t, err_entry("h", "is a directory"))
        }),
    );
    add(
        "char device",
        Box::new(|_| {
            let mut t = Tar::default();
            t.device("null", EntryType::Char, 1, 3);
            case(
                &t,
                safe(|c| {
                    let m = fs::symlink_metadata(c.root.join("null")).unwrap();
                    assert!(m.file_type().is_char_device());
                    assert_eq!(m.rdev(), rustix::fs::makedev(1, 3));
                }),
            )
        }),
    );
    add(
        "block device",
        Box::new(|_| {
            let mut t = Tar::default();
            t.device("loop", EntryType::Block, 7, 0);
            case(
                &t,
                safe(|c| {
                    let m = fs::symlink_metadata(c.root.join("loop")).unwrap();
                    assert!(m.file_type().is_block_device());
                    assert_eq!(m.rdev(), rustix::fs::makedev(7, 0));
                }),
            )
        }),
    );
    add(
        "fifo",
        Box::new(|_| {
            let mut t = Tar::default();
            t.entry("pipe", EntryType::Fifo, "", b"");
            case(
                &t,
                safe(|c| {
                    let m = fs::symlink_metadata(c.root.join("pipe")).unwrap();
                    assert!(m.file_type().is_fifo());
                }),
            )
        }),
    );
    add(
        "device through a symlink to /",
        Box::new(|_| {
            let mut t = Tar::default();
            t.symlink("x", "/")
                .device("x/dev/kmem", EntryType::Char, 1, 2);
            case(
                &t,
                safe(|c| {
                    let m = fs::symlink_metadata(c.root.join("dev/kmem")).unwrap();
                    assert!(m.file_type().is_char_device());
                }),
            )
        }),
    );
    add(
        "whiteout of ..",
        Box::new(|_| Case {
            reject: Some(err_entry(".wh...", WHITEOUT)),
            ..case(
                Tar::default().file(".wh...", b""),
                err_entry(".wh...", UNSAFE),
            )
        }),
    );
    add(
        "nested whiteout of ..",
        Box::new(|_| Case {
            reject: Some(err_entry("a/.wh...", WHITEOUT)),
            ..case(
                Tar::default().dir("a/").file("a/.wh...", b""),
                err_entry("a/.wh...", UNSAFE),
            )
        }),
    );
    add(
        "whiteout of .",
        Box::new(|_| Case {
            reject: Some(err_entry(".wh..", WHITEOUT)),
            ..case(
                Tar::default().file(".wh..", b""),
                err_entry(".wh..", UNSAFE),
            )
        }),
    );
    add(
        ".wh. in a directory component",
        Box::new(|_| Case {
            reject: Some(err_entry(".wh.a/b", WHITEOUT)),
            ..case(
                Tar::default().file(".wh.a/b", b""),
                err_entry(".wh.a/b", "reserved for whiteouts"),
            )
        }),
    );
    add(
        "whiteout through a symlink to the host",
        Box::new(|c| {
            let mut t = Tar::default();
            t.symlink("s", c.host_str()).file("s/.wh.bait", b"");
            Case {
                reject: Some(err_entry("s/.wh.bait", WHITEOUT)),
                ..case(&t, err_entry("s/.wh.bait", "cannot create directory"))
            }
        }),
    );
    add(
        "opaque marker in a symlinked dir",
        Box::new(|_| {
            let mut t = Tar::default();
            t.symlink("d", "..").file("d/.wh..wh..opq", b"");
            Case {
                reject: Some(err_entry("d/.wh..wh..opq", WHITEOUT)),
                ..case(&t, err_entry("d/.wh..wh..opq", "cannot mark opaque"))
            }
        }),
    );
    add(
        "huge declared size, short data",
        Box::new(|_| {
            let mut t = Tar::default();
            let h = Tar::header(b"big", EntryType::Regular, b"", 1 << 40);
            t.raw(&h, &[7; 1000]);
            let mut bytes = t.0.clone();
            bytes.truncate(512 + 1000);
            Case {
                tar: bytes,
                overlay: err_entry(
                    "big",
                    "the archive ends after 1000 of its 1099511627776 bytes",
                ),
                reject: None,
            }
        }),
    );
    add(
        "truncated header",
        Box::new(|_| {
            let mut bytes = Tar::default().file("ok", b"fine").bytes();
            bytes.truncate(1024);
            bytes.extend_from_slice(
                &Tar::header(b"cut", EntryType::Regular, b"", 0).as_bytes()[..300],
            );
            Case {
                tar: bytes,
                overlay: err(&["cannot read the layer tar stream"]),
                reject: None,
            }
        }),
    );
    add(
        "negative size",
        Box::new(|_| {
            let mut h = Tar::header(b"neg", EntryType::Regular, b"", 0);
            h.as_old_mut().size = [0xff; 12];
            h.set_cksum();
            let mut t = Tar::default();
            t.raw(&h, b"");
            case(
                &t,
                err(&["cannot read the layer tar stream", "size overflow"]),
            )
        }),
    );
    add(
        "overflowing uid",
        Box::new(|_| {
            let mut h = Tar::header(b"uid", EntryType::Regular, b"", 0);
            h.as_old_mut().uid = [0x80, 0, 0, 1, 0, 0, 0, 0];
            h.set_cksum();
            let mut t = Tar::default();
            t.raw(&h, b"");
            case(&t, err_entry("uid", "uid 4294967296 is out of range"))
        }),
    );
    add(
        "uid -1 in PAX",
        Box::new(|_| {
            let mut t = Tar::default();
            t.pax(&[("uid", "4294967295")]).file("u", b"");
            case(&t, err_entry("u", "uid 4294967295 is out of range"))
        }),
    );
    add(
        "mode that is not a number",
        Box::new(|_| {
            let mut h = Tar::header(b"mode", EntryType::Regular, b"", 0);
            h.as_old_mut().mode = *b"9x9x9x9\0";
            h.set_cksum();
            let mut t = Tar::default();
            t.raw(&h, b"");
            case(&t, err_entry("mode", "numeric field"))
        }),
    );
    add(
        "negative mtime",
        Box::new(|_| {
            let mut h = Tar::header(b"old", EntryType::Regular, b"", 0);
            h.as_old_mut().mtime = [0xff; 12];
            h.set_cksum();
            let mut t = Tar::default();
            t.raw(&h, b"");
            case(
                &t,
                safe(|c| assert_eq!(fs::metadata(c.root.join("old")).unwrap().mtime(), -1)),
            )
        }),
    );
    add(
        "bad checksum",
        Box::new(|_| {
            let mut h = Tar::header(b"sum", EntryType::Regular, b"", 0);
            h.as_old_mut().cksum = *b"0000000\0";
            let mut t = Tar::default();
            t.raw(&h, b"");
            case(&t, err(&["cannot read the layer tar stream", "checksum"]))
        }),
    );
    add(
        "PAX path overriding to ../",
        Box::new(|c| {
            let name = format!("../{}", c.mark);
            let mut t = Tar::default();
            t.pax(&[("path", &name)]).file("innocent", b"evil");
            case(&t, err_entry(&name, UNSAFE))
        }),
    );
    add(
        "PAX linkpath of a hardlink to ../",
        Box::new(|_| {
            let mut t = Tar::default();
            t.pax(&[("linkpath", "../../etc/passwd")])
                .hardlink("h", "ok");
            case(&t, err_entry("h", UNSAFE))
        }),
    );
    add(
        "PAX linkpath of a symlink to the bait",
        Box::new(|c| {
            let target = format!("{}/bait", c.host_str());
            let mut t = Tar::default();
            t.pax(&[("linkpath", &target)]).symlink("s", "ok");
            case(&t, safe(move |c| symlink_is(&c.root.join("s"), &target)))
        }),
    );
    add(
        "PAX size larger than the data",
        Box::new(|_| {
            let mut t = Tar::default();
            t.pax(&[("size", "5000")]).file("p", b"tiny");
            case(
                &t,
                err_entry("p", "the archive ends after 1536 of its 5000 bytes"),
            )
        }),
    );
    add(
        "PAX forged overlay xattrs",
        Box::new(|_| {
            let mut t = Tar::default();
            t.pax(&[
                ("SCHILY.xattr.trusted.overlay.redirect", "/etc"),
                ("SCHILY.xattr.trusted.overlay.opaque", "y"),
            ])
            .dir("d/");
            case(
                &t,
                safe(|c| {
                    let d = c.root.join("d");
                    assert_eq!(xattr::get(&d, "trusted.overlay.redirect").unwrap(), None);
                    assert_eq!(xattr::get(&d, "trusted.overlay.opaque").unwrap(), None);
                }),
            )
        }),
    );
    add(
        "GNU long name with ..",
        Box::new(|c| {
            let name = format!("{}/../../../{}", "a".repeat(120), c.mark);
            let mut t = Tar::default();
            t.gnu_long(EntryType::GNULongName, &name)
                .file("short", b"evil");
            case(&t, err_entry(&name, UNSAFE))
        }),
    );
    add(
        "GNU long link name with ..",
        Box::new(|_| {
            let target = format!("{}/../../../bait", "a".repeat(120));
            let mut t = Tar::default();
            t.gnu_long(EntryType::GNULongLink, &target)
                .hardlink("h", "ok");
            case(&t, err_entry("h", UNSAFE))
        }),
    );
    add(
        "directory replaced by a symlink to the host, then written through",
        Box::new(|c| {
            let mut t = Tar::default();
            t.dir("d/")
                .file("d/f", b"inner")
                .symlink("d", c.host_str())
                .file("d/bait", b"evil");
            case(&t, err_entry("d/bait", "cannot create directory"))
        }),
    );
    add(
        "directory replaced by a symlink to .., then written through",
        Box::new(|c| {
            let mut t = Tar::default();
            t.dir("d/")
                .file("d/f", b"inner")
                .symlink("d", "../..")
                .file(&format!("d/{}", c.mark), b"evil");
            case(
                &t,
                safe(|c| {
                    symlink_is(&c.root.join("d"), "../..");
                    file_is(&c.root.join(&c.mark), b"evil");
                }),
            )
        }),
    );
    add(
        "symlink replaced by a directory",
        Box::new(|c| {
            let mut t = Tar::default();
            t.symlink("d", c.host_str())
                .dir("d/")
                .file("d/bait", b"evil");
            case(&t, safe(|c| file_is(&c.root.join("d/bait"), b"evil")))
        }),
    );
    add(
        "unknown entry type",
        Box::new(|_| {
            let mut t = Tar::default();
            t.entry("odd", EntryType::new(b'Z'), "", b"");
            case(&t, err_entry("odd", "unsupported entry type"))
        }),
    );
    cases
}

fn run(name: &str, c: &Ctx, tar: &[u8], whiteouts: Whiteouts, expect: &Expect) {
    let before = c.snapshot();
    let opts = UnpackOptions {
        whiteouts,
        preserve_owners: whiteouts == Whiteouts::Overlay,
        lowers: Vec::new(),
        exclude: Default::default(),
    };
    let result = std::panic::catch_unwind(|| unpack(tar, &c.root, &opts))
        .unwrap_or_else(|_| panic!("{name} ({whiteouts:?}): unpack panicked"));
    assert_eq!(
        c.snapshot(),
        before,
        "{name} ({whiteouts:?}): the host dir changed"
    );
    c.assert_no_marker_outside();
    match (expect, result) {
        (Expect::Err(parts), Err(e)) => {
            let msg = e.to_string();
            for p in parts {
                assert!(
                    msg.contains(p.as_str()),
                    "{name} ({whiteouts:?}): {msg:?} lacks {p:?}"
                );
            }
        }
        (Expect::Safe(check), Ok(_)) => check(c),
        (Expect::Err(parts), Ok(_)) => {
            panic!("{name} ({whiteouts:?}): succeeded, expected {parts:?}")
        }
        (Expect::Safe(_), Err(e)) => panic!("{name} ({whiteouts:?}): failed: {e}"),
    }
}

#[test]
fn the_corpus_stays_inside_the_root_in_both_modes() {
    let corpus = corpus();
    assert!(corpus.len() >= 25, "only {} cases", corpus.len());
    for (name, build) in &corpus {
        for whiteouts in [Whiteouts::Overlay, Whiteouts::Reject, Whiteouts::Apply] {
            let (_host, ctx) = Ctx::new();
            let case = build(&ctx);
            // Applying whiteouts deletes rather than records them, so the
            // overlay-format checks do not apply; the refusals and the
            // safety of the host dir do.
            let applied = match &case.overlay {
                Expect::Err(parts) => Expect::Err(parts.clone()),
                Expect::Safe(_) => Expect::Safe(Box::new(|_: &Ctx| {})),
            };
            let expect = match whiteouts {
                Whiteouts::Reject => case.reject.as_ref().unwrap_or(&case.overlay),
                Whiteouts::Overlay => &case.overlay,
                Whiteouts::Apply => &applied,
            };
            run(name, &ctx, &case.tar, whiteouts, expect);
        }
    }
}

/// Peak resident memory of this process, in KiB.
fn max_rss_kib() -> i64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) };
    assert_eq!(rc, 0);
    // SAFETY: initialised by the successful call above.
    unsafe { usage.assume_init() }.ru_maxrss
}

/// A 1 GiB entry of zeros, generated as it is read: the archive is never in
/// memory, and the unpacker must neither buffer it nor write 1 GiB to disk.
fn gib_of_zeros(size: u64, data: u64) -> impl Read {
    let h = Tar::header(b"huge", EntryType::Regular, b"", size);
    let pad = data.next_multiple_of(512) - data;
    io::Cursor::new(h.as_bytes().to_vec())
        .chain(io::repeat(0).take(data))
        .chain(io::repeat(0).take(pad + 1024))
}

#[test]
fn a_gib_entry_streams_in_bounded_memory_and_stays_sparse() {
    const GIB: u64 = 1 << 30;
    for whiteouts in [Whiteouts::Overlay, Whiteouts::Reject] {
        let (_host, c) = Ctx::new();
        let before = c.snapshot();
        let rss = max_rss_kib();
        let opts = UnpackOptions {
            whiteouts,
            preserve_owners: false,
            lowers: Vec::new(),
            exclude: Default::default(),
        };
        let stats = unpack(gib_of_zeros(GIB, GIB), &c.root, &opts).unwrap();
        assert_eq!(stats.file_bytes, GIB);
        let m = fs::metadata(c.root.join("huge")).unwrap();
        assert_eq!(m.len(), GIB);
        assert!(m.blocks() * 512 < 1 << 20, "{} blocks on disk", m.blocks());
        assert!(
            max_rss_kib() - rss < 64 * 1024,
            "memory grew while streaming"
        );
        assert_eq!(c.snapshot(), before);

        // Declared 1 GiB, but the stream ends after 1 MiB.
        let (_host, c) = Ctx::new();
        let mut short = gib_of_zeros(GIB, 1 << 20).take(512 + (1 << 20));
        let err = unpack(&mut short, &c.root, &opts).unwrap_err().to_string();
        assert!(
            err.contains("\"huge\"") && err.contains("1048576 of its"),
            "{err}"
        );
        assert!(
            max_rss_kib() - rss < 64 * 1024,
            "memory grew while streaming"
        );
    }
}

/// One header of a random archive: kind, name parts, link parts, data.
type RandomEntry = (u8, Vec<&'static str>, Vec<&'static str>, Vec<u8>);

const PARTS: &[&str] = &[
    "a",
    "b",
    "..",
    ".",
    "",
    "etc",
    ".wh.a",
    ".wh..wh..opq",
    ".wh...",
    "MARK",
    "HOST",
];

fn join(parts: &[&str], c: &Ctx) -> String {
    parts
        .iter()
        .map(|p| match *p {
            "MARK" => c.mark.as_str(),
            "HOST" => c.host_str(),
            p => p,
        })
        .collect::<Vec<_>>()
        .join("/")
}

fn random_entry() -> impl Strategy<Value = RandomEntry> {
    let part = prop::sample::select(PARTS);
    (
        prop::sample::select(b"0253467Lxg".as_slice()),
        prop::collection::vec(part.clone(), 1..5),
        prop::collection::vec(part, 0..5),
        prop::collection::vec(any::<u8>(), 0..40),
    )
}

/// Unpacks the tar `build` makes for a fresh host dir, in both modes, and
/// checks that nothing outside the root changed.
fn assert_contained(build: impl Fn(&Ctx) -> Vec<u8>) {
    let (_host, c) = Ctx::new();
    let tar = build(&c);
    let before = c.snapshot();
    for whiteouts in [Whiteouts::Overlay, Whiteouts::Reject] {
        let root = tempfile::tempdir_in(&c.root).unwrap();
        let opts = UnpackOptions {
            whiteouts,
            preserve_owners: true,
            lowers: Vec::new(),
            exclude: Default::default(),
        };
        let result = std::panic::catch_unwind(|| unpack(&tar[..], root.path(), &opts));
        assert!(result.is_ok(), "unpack panicked");
        assert_eq!(c.snapshot(), before);
        c.assert_no_marker_outside();
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn random_bytes_never_panic_or_escape(bytes in prop::collection::vec(any::<u8>(), 0..3000)) {
        assert_contained(|_| bytes.clone());
    }

    #[test]
    fn random_headers_never_panic_or_escape(entries in prop::collection::vec(random_entry(), 1..8)) {
        assert_contained(|c| {
            let mut t = Tar::default();
            for (kind, name, link, data) in &entries {
                let (name, link) = (join(name, c), join(link, c));
                let (name, link) = (&name[..name.len().min(100)], &link[..link.len().min(100)]);
                if *kind == b'x' {
                    t.pax(&[("path", name), ("linkpath", link)]);
                } else {
                    let data: &[u8] = if matches!(kind, b'0' | b'L') { data } else { b"" };
                    t.entry(name, EntryType::new(*kind), link, data);
                }
            }
            t.bytes()
        });
    }
}
