//! Step cache keys: a hash chain where each filesystem step's key covers
//! its parent's key and everything that decides what the step writes.
//! Pure: the caller hands in digests of whatever had to be read.
//!
//! The encoding is canonical and unambiguous: a version string, then a
//! kind tag and length-prefixed fields in a fixed order, environment
//! sorted by name. Changing it means changing [`VERSION`], so that old
//! cache entries are never read with new meanings.

use crate::digest::Digest;
use crate::plugin::wit;

/// Prefixes every key; bump it whenever the encoding or its meaning changes.
pub const VERSION: &str = "kiln-cache-v1";

/// What a stage starts from.
#[derive(Clone, Copy, Debug)]
pub enum Base<'a> {
    /// `FROM scratch` on a platform (`os/arch[/variant]`).
    Scratch { platform: &'a str },
    /// An image, by the digest of its platform manifest.
    Image {
        manifest: &'a Digest,
        platform: &'a str,
    },
    /// A previous stage, by its final key.
    Stage(&'a Digest),
}

/// The inputs of a COPY, shared by ADD.
#[derive(Clone, Copy, Debug)]
pub struct CopyInput<'a> {
    /// From [`super::sources::digest_sources`]: every copied entry.
    pub sources: &'a Digest,
    pub dest: &'a str,
    /// `--chown` as written; names resolve against the image, which the
    /// parent key fixes.
    pub chown: Option<&'a str>,
    pub chmod: Option<&'a str>,
    pub link: bool,
    pub parents: bool,
    pub excludes: &'a [String],
    /// `--from`: the stage's key or the image's manifest digest.
    pub from: Option<&'a Digest>,
}

/// What a filesystem step does, with every input that decides its output.
#[derive(Clone, Copy, Debug)]
pub enum StepInput<'a> {
    Run {
        /// The full command line, shell included.
        argv: &'a [String],
        /// Every variable the command sees from ARG and ENV (see
        /// [`run_env`]), names unique; order does not matter.
        env: &'a [(String, String)],
        user: Option<&'a str>,
        workdir: &'a str,
        /// [`mount_text`] of each mount, in order.
        mounts: &'a [String],
        network: wit::NetworkMode,
        insecure: bool,
    },
    Copy(CopyInput<'a>),
    Add {
        copy: CopyInput<'a>,
        /// The digest of each downloaded URL source (or its `--checksum`), in order.
        urls: &'a [Digest],
        /// `--checksum` as written.
        checksum: Option<&'a str>,
    },
    MakeDir {
        path: &'a str,
        chown: Option<&'a str>,
    },
    WriteFile {
        path: &'a str,
        content: &'a Digest,
        mode: u32,
        chown: Option<&'a str>,
    },
    /// A step that cannot be keyed by its inputs (an ADD of a URL without
    /// `--checksum`), keyed after it ran by the layer it made.
    Executed {
        layer: Option<&'a Digest>,
    },
}

/// Canonical bytes: strings are length-prefixed, options carry a presence
/// byte, numbers a fixed width and lists a count, so no two different
/// inputs encode alike.
struct Encoder(Vec<u8>);

impl Encoder {
    fn new(kind: &str) -> Encoder {
        let mut e = Encoder(Vec::new());
        e.str(VERSION);
        e.str(kind);
        e
    }

    fn bytes(&mut self, b: &[u8]) {
        self.0.extend_from_slice(&(b.len() as u64).to_be_bytes());
        self.0.extend_from_slice(b);
    }

    fn str(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }

    fn opt(&mut self, s: Option<&str>) {
        match s {
            None => self.0.push(0),
            Some(s) => {
                self.0.push(1);
                self.str(s);
            }
        }
    }

    fn flag(&mut self, b: bool) {
        self.0.push(u8::from(b));
    }

    fn num(&mut self, n: u64) {
        self.0.extend_from_slice(&n.to_be_bytes());
    }

    fn list<T>(&mut self, items: &[T], mut each: impl FnMut(&mut Self, &T)) {
        self.num(items.len() as u64);
        for item in items {
            each(self, item);
        }
    }

    fn copy(&mut self, c: &CopyInput<'_>) {
        self.str(c.sources.as_str());
        self.str(c.dest);
        self.opt(c.chown);
        self.opt(c.chmod);
        self.flag(c.link);
        self.flag(c.parents);
        self.list(c.excludes, |e, x| e.str(x));
        self.opt(c.from.map(Digest::as_str));
    }

    fn finish(self) -> Digest {
        Digest::of(&self.0)
    }
}

/// The key a stage's first step chains from.
pub fn base_key(base: Base<'_>) -> Digest {
    let mut e;
    match base {
        Base::Scratch { platform } => {
            e = Encoder::new("scratch");
            e.str(platform);
        }
        Base::Image { manifest, platform } => {
            e = Encoder::new("image");
            e.str(manifest.as_str());
            e.str(platform);
        }
        Base::Stage(key) => {
            e = Encoder::new("stage");
            e.str(key.as_str());
        }
    }
    e.finish()
}

/// The key of a step on top of `parent` (a base key or the previous step's).
pub fn step_key(parent: &Digest, step: &StepInput<'_>) -> Digest {
    let kind = match step {
        StepInput::Run { .. } => "run",
        StepInput::Copy(_) => "copy",
        StepInput::Add { .. } => "add",
        StepInput::MakeDir { .. } => "make-dir",
        StepInput::WriteFile { .. } => "write-file",
        StepInput::Executed { .. } => "executed",
    };
    let mut e = Encoder::new(kind);
    e.str(parent.as_str());
    match step {
        StepInput::Run {
            argv,
            env,
            user,
            workdir,
            mounts,
            network,
            insecure,
        } => {
            e.list(argv, |e, a| e.str(a));
            let mut sorted: Vec<&(String, String)> = env.iter().collect();
            sorted.sort();
            e.list(&sorted, |e, (k, v)| {
                e.str(k);
                e.str(v);
            });
            e.opt(*user);
            e.str(workdir);
            e.list(mounts, |e, m| e.str(m));
            e.str(match network {
                wit::NetworkMode::Default => "default",
                wit::NetworkMode::None => "none",
                wit::NetworkMode::Host => "host",
            });
            e.flag(*insecure);
        }
        StepInput::Copy(c) => e.copy(c),
        StepInput::Add {
            copy,
            urls,
            checksum,
        } => {
            e.copy(copy);
            e.list(urls, |e, d| e.str(d.as_str()));
            e.opt(*checksum);
        }
        StepInput::MakeDir { path, chown } => {
            e.str(path);
            e.opt(*chown);
        }
        StepInput::WriteFile {
            path,
            content,
            mode,
            chown,
        } => {
            e.str(path);
            e.str(content.as_str());
            e.num(u64::from(*mode));
            e.opt(*chown);
        }
        StepInput::Executed { layer } => e.opt(layer.map(Digest::as_str)),
    }
    e.finish()
}

/// The variables a RUN sees from its ARGs in scope (`args`, with values)
/// and the config's ENV, which wins on a name clash as in Docker; sorted
/// by name. Variables that mounts add (secrets as env, the SSH agent) are
/// deliberately absent: their values must never enter a key.
pub fn run_env(
    args: &[(String, String)],
    config_env: &[(String, String)],
) -> Vec<(String, String)> {
    let mut merged: Vec<(String, String)> = config_env.to_vec();
    for (k, v) in args {
        if !merged.iter().any(|(mk, _)| mk == k) {
            merged.push((k.clone(), v.clone()));
        }
    }
    merged.sort();
    merged
}

/// The canonical text of a RUN mount. `content` is what a bind (or a
/// seeded cache) mount shows: the digest of its source in the context, or
/// the key of its `from` stage or image. A secret or SSH mount is named by
/// id and where it appears, never by its value; a cache mount's contents
/// are by design not part of the key.
pub fn mount_text(m: &wit::RunMount, content: Option<&Digest>) -> String {
    let mut fields: Vec<(&str, String)> = Vec::new();
    let kind = match m.kind {
        wit::MountKind::Bind => "bind",
        wit::MountKind::Cache => "cache",
        wit::MountKind::Tmpfs => "tmpfs",
        wit::MountKind::Secret => "secret",
        wit::MountKind::Ssh => "ssh",
    };
    fields.push(("type", kind.into()));
    let quoted = |s: &Option<String>| s.as_ref().map(|v| format!("{v:?}"));
    let num = |n: Option<u32>| n.map(|v| v.to_string());
    let mut push = |name, value: Option<String>| {
        if let Some(v) = value {
            fields.push((name, v));
        }
    };
    push("target", quoted(&m.target));
    match m.kind {
        wit::MountKind::Bind | wit::MountKind::Cache => {
            push("source", quoted(&m.source));
            push("from", quoted(&m.from));
            push("rw", m.read_write.map(|b| b.to_string()));
            push("content", content.map(|d| d.to_string()));
            if m.kind == wit::MountKind::Cache {
                push("id", quoted(&m.id));
                let sharing = match m.sharing {
                    wit::CacheSharing::Shared => "shared",
                    wit::CacheSharing::Private => "private",
                    wit::CacheSharing::Locked => "locked",
                };
                push("sharing", Some(sharing.into()));
                push("mode", m.mode.map(|v| format!("{v:o}")));
                push("uid", num(m.uid));
                push("gid", num(m.gid));
            }
        }
        wit::MountKind::Tmpfs => push("size", m.size.map(|v| v.to_string())),
        wit::MountKind::Secret | wit::MountKind::Ssh => {
            push("id", quoted(&m.id));
            push("env", quoted(&m.env));
            push("required", Some(m.required.to_string()));
            push("mode", m.mode.map(|v| format!("{v:o}")));
            push("uid", num(m.uid));
            push("gid", num(m.gid));
        }
    }
    fields
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Digest {
        Digest::of(s.as_bytes())
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn env(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    struct RunFields {
        argv: Vec<String>,
        env: Vec<(String, String)>,
        user: Option<String>,
        workdir: String,
        mounts: Vec<String>,
        network: wit::NetworkMode,
        insecure: bool,
    }

    impl RunFields {
        fn sample() -> RunFields {
            RunFields {
                argv: strings(&["/bin/sh", "-c", "make"]),
                env: env(&[("A", "1"), ("PATH", "/bin")]),
                user: None,
                workdir: "/src".into(),
                mounts: strings(&["type=tmpfs,target=\"/t\""]),
                network: wit::NetworkMode::Default,
                insecure: false,
            }
        }

        fn key(&self, parent: &Digest) -> Digest {
            step_key(
                parent,
                &StepInput::Run {
                    argv: &self.argv,
                    env: &self.env,
                    user: self.user.as_deref(),
                    workdir: &self.workdir,
                    mounts: &self.mounts,
                    network: self.network,
                    insecure: self.insecure,
                },
            )
        }
    }

    fn mount(kind: wit::MountKind) -> wit::RunMount {
        wit::RunMount {
            kind,
            target: Some("/m".into()),
            source: None,
            from: None,
            read_write: None,
            id: Some("x".into()),
            sharing: wit::CacheSharing::Shared,
            mode: None,
            uid: None,
            gid: None,
            required: false,
            size: None,
            env: None,
        }
    }

    #[test]
    fn base_keys_tell_every_base_apart() {
        let m = d("manifest");
        let keys = [
            base_key(Base::Scratch {
                platform: "linux/amd64",
            }),
            base_key(Base::Scratch {
                platform: "linux/arm64",
            }),
            base_key(Base::Image {
                manifest: &m,
                platform: "linux/amd64",
            }),
            base_key(Base::Image {
                manifest: &d("other"),
                platform: "linux/amd64",
            }),
            base_key(Base::Image {
                manifest: &m,
                platform: "linux/arm64",
            }),
            base_key(Base::Stage(&m)),
        ];
        for (i, a) in keys.iter().enumerate() {
            for b in &keys[i + 1..] {
                assert_ne!(a, b);
            }
        }
        assert_eq!(keys[5], base_key(Base::Stage(&m)));
    }

    #[test]
    fn run_keys_are_deterministic_and_every_field_counts() {
        let parent = d("parent");
        let base = RunFields::sample();
        let k = base.key(&parent);
        assert_eq!(k, RunFields::sample().key(&parent));
        assert_ne!(k, base.key(&d("other parent")));
        let tweaks: [fn(&mut RunFields); 11] = [
            |r| r.argv[2] = "make all".into(),
            |r| r.argv.push(String::new()),
            |r| r.env[0].1 = "2".into(),
            |r| r.env.push(("NEW".into(), String::new())),
            |r| r.user = Some("app".into()),
            |r| r.user = Some(String::new()),
            |r| r.workdir = "/".into(),
            |r| r.mounts.clear(),
            |r| r.network = wit::NetworkMode::None,
            |r| r.network = wit::NetworkMode::Host,
            |r| r.insecure = true,
        ];
        let mut seen = vec![k];
        for tweak in tweaks {
            let mut r = RunFields::sample();
            tweak(&mut r);
            let changed = r.key(&parent);
            assert!(!seen.contains(&changed), "a tweak left the key unchanged");
            seen.push(changed);
        }
    }

    #[test]
    fn field_boundaries_cannot_be_shifted() {
        let parent = d("p");
        let mut a = RunFields::sample();
        a.argv = strings(&["ab", "c"]);
        let mut b = RunFields::sample();
        b.argv = strings(&["a", "bc"]);
        assert_ne!(a.key(&parent), b.key(&parent));
        let mut c = RunFields::sample();
        c.env = env(&[("A", "B=C")]);
        let mut e = RunFields::sample();
        e.env = env(&[("A=B", "C")]);
        assert_ne!(c.key(&parent), e.key(&parent));
    }

    #[test]
    fn env_order_does_not_matter() {
        let parent = d("p");
        let mut a = RunFields::sample();
        a.env = env(&[("A", "1"), ("B", "2"), ("C", "3")]);
        let mut b = RunFields::sample();
        b.env = env(&[("C", "3"), ("A", "1"), ("B", "2")]);
        assert_eq!(a.key(&parent), b.key(&parent));
    }

    #[test]
    fn run_env_merges_args_under_env_and_hides_what_the_step_cannot_see() {
        let config = env(&[("PATH", "/bin"), ("MODE", "env")]);
        let merged = run_env(&env(&[("VERSION", "1"), ("MODE", "arg")]), &config);
        assert_eq!(
            merged,
            env(&[("MODE", "env"), ("PATH", "/bin"), ("VERSION", "1")])
        );
        // An ARG shadowed by ENV is not seen: its value cannot change the key.
        let parent = d("p");
        let key_with = |args: &[(&str, &str)]| {
            let mut r = RunFields::sample();
            r.env = run_env(&env(args), &config);
            r.key(&parent)
        };
        assert_eq!(key_with(&[("MODE", "one")]), key_with(&[("MODE", "two")]));
        assert_eq!(key_with(&[]), key_with(&[("MODE", "x")]));
        assert_ne!(key_with(&[("VERSION", "1")]), key_with(&[("VERSION", "2")]));
    }

    #[test]
    fn copy_and_add_keys_cover_every_field() {
        let parent = d("p");
        let (src, other_src, from) = (d("sources"), d("sources2"), d("stage"));
        let ex = strings(&["*.md"]);
        let base = CopyInput {
            sources: &src,
            dest: "/app/",
            chown: None,
            chmod: None,
            link: false,
            parents: false,
            excludes: &[],
            from: None,
        };
        let variants = [
            base,
            CopyInput {
                sources: &other_src,
                ..base
            },
            CopyInput {
                dest: "/app",
                ..base
            },
            CopyInput {
                chown: Some("1:1"),
                ..base
            },
            CopyInput {
                chmod: Some("755"),
                ..base
            },
            CopyInput { link: true, ..base },
            CopyInput {
                parents: true,
                ..base
            },
            CopyInput {
                excludes: &ex,
                ..base
            },
            CopyInput {
                from: Some(&from),
                ..base
            },
        ];
        let mut keys: Vec<Digest> = variants
            .iter()
            .map(|c| step_key(&parent, &StepInput::Copy(*c)))
            .collect();
        let urls = [d("download")];
        keys.push(step_key(
            &parent,
            &StepInput::Add {
                copy: base,
                urls: &[],
                checksum: None,
            },
        ));
        keys.push(step_key(
            &parent,
            &StepInput::Add {
                copy: base,
                urls: &urls,
                checksum: None,
            },
        ));
        keys.push(step_key(
            &parent,
            &StepInput::Add {
                copy: base,
                urls: &urls,
                checksum: Some("sha256:abc"),
            },
        ));
        for (i, a) in keys.iter().enumerate() {
            for b in &keys[i + 1..] {
                assert_ne!(a, b);
            }
        }
        assert_eq!(keys[0], step_key(&parent, &StepInput::Copy(base)));
    }

    #[test]
    fn make_dir_and_write_file_keys_cover_every_field() {
        let parent = d("p");
        let (c1, c2) = (d("one"), d("two"));
        let write = |path, content, mode, chown| {
            step_key(
                &parent,
                &StepInput::WriteFile {
                    path,
                    content,
                    mode,
                    chown,
                },
            )
        };
        let dir = |path, chown| step_key(&parent, &StepInput::MakeDir { path, chown });
        let keys = [
            write("/f", &c1, 0o644, None),
            write("/g", &c1, 0o644, None),
            write("/f", &c2, 0o644, None),
            write("/f", &c1, 0o755, None),
            write("/f", &c1, 0o644, Some("app")),
            dir("/f", None),
            dir("/g", None),
            dir("/f", Some("app")),
        ];
        for (i, a) in keys.iter().enumerate() {
            for b in &keys[i + 1..] {
                assert_ne!(a, b);
            }
        }
        assert_eq!(keys[0], write("/f", &c1, 0o644, None));
    }

    #[test]
    fn mount_text_is_canonical_and_never_holds_secret_values() {
        let mut cache = mount(wit::MountKind::Cache);
        cache.sharing = wit::CacheSharing::Locked;
        cache.mode = Some(0o755);
        assert_eq!(
            mount_text(&cache, None),
            "type=cache,target=\"/m\",id=\"x\",sharing=locked,mode=755"
        );
        let mut bind = mount(wit::MountKind::Bind);
        bind.source = Some("src".into());
        let (c1, c2) = (d("one"), d("two"));
        assert_ne!(mount_text(&bind, Some(&c1)), mount_text(&bind, Some(&c2)));
        assert!(mount_text(&bind, Some(&c1)).contains(c1.as_str()));
        let mut secret = mount(wit::MountKind::Secret);
        secret.env = Some("TOKEN".into());
        assert_eq!(
            mount_text(&secret, None),
            "type=secret,target=\"/m\",id=\"x\",env=\"TOKEN\",required=false"
        );
        let mut quoted = mount(wit::MountKind::Tmpfs);
        quoted.target = Some("/a,size=1".into());
        let mut sized = mount(wit::MountKind::Tmpfs);
        sized.target = Some("/a".into());
        sized.size = Some(1);
        assert_ne!(mount_text(&quoted, None), mount_text(&sized, None));
    }
}
