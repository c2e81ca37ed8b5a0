//! COPY and ADD: sources, heredoc files, and their flags.

use kiln_plugin_sdk::{AddFiles, CopyFiles, Effect, Outcome, PluginError, WriteFile};

use super::{Cx, Expander};
use crate::chmod;
use crate::flags::{Flags, Spec};
use crate::sources::{self, Kind};
use crate::{paths, words};

/// The mode of a heredoc file before `--chmod`.
const HEREDOC_MODE: u32 = 0o644;

const COPY_FLAGS: &[Spec] = &[
    Spec::string("chown"),
    Spec::string("from"),
    Spec::string("chmod"),
    Spec::bool("link"),
    Spec::strings("exclude"),
    Spec::bool("parents"),
];

const ADD_FLAGS: &[Spec] = &[
    Spec::string("chown"),
    Spec::string("chmod"),
    Spec::bool("link"),
    Spec::bool("keep-git-dir"),
    Spec::string("checksum"),
    Spec::bool("unpack"),
    Spec::strings("exclude"),
];

/// A heredoc used as a source: the file it becomes.
struct InlineFile {
    name: String,
    content: String,
}

impl<H: Expander> Cx<'_, H> {
    pub(super) fn copy(&self) -> Result<Outcome, PluginError> {
        self.copy_or_add(false)
    }

    pub(super) fn add(&self) -> Result<Outcome, PluginError> {
        self.copy_or_add(true)
    }

    fn copy_or_add(&self, add: bool) -> Result<Outcome, PluginError> {
        let keyword = self.keyword();
        let args = match &self.instruction.json {
            Some(args) => args.clone(),
            None => words::split_blanks(self.text()),
        };
        let Some((dest, sources)) = args.split_last().filter(|(_, s)| !s.is_empty()) else {
            return Err(self.error(format!(
                "{keyword} requires at least two arguments, but only one was provided. Destination could not be determined"
            )));
        };
        let flags = self.flags(if add { ADD_FLAGS } else { COPY_FLAGS })?;
        if words::heredoc_marker(dest).is_some() {
            return Err(self.error(format!(
                "{keyword} cannot accept a heredoc as a destination"
            )));
        }
        let mut source_paths = Vec::new();
        let mut inline = Vec::new();
        for source in sources {
            match words::heredoc_marker(source) {
                Some(name) => inline.push(self.inline_file(name)?),
                None => source_paths.push(source.clone()),
            }
        }
        let from = self.copy_from(&flags)?;

        let chown = self.optional_flag(&flags, "chown")?;
        let chmod = self.optional_flag(&flags, "chmod")?;
        let checksum = self.optional_flag(&flags, "checksum")?;
        let source_paths = self.expand_all(&source_paths)?;
        let dest_written = self.expand(dest)?;

        let dest = paths::copy_destination(self.current_workdir(), &dest_written);
        let mode = match &chmod {
            Some(text) => Some(chmod::parse(text).map_err(|e| self.error(e))?),
            None => None,
        };
        if let Some(checksum) = &checksum {
            self.check_checksum(checksum, &source_paths)?;
        }
        for source in &source_paths {
            match (add, sources::kind(source)) {
                (false, Kind::Git) => {
                    return Err(self.error("source can't be a git ref for COPY"));
                }
                (false, Kind::Http) => return Err(self.error("source can't be a URL for COPY")),
                _ => {}
            }
        }
        if let Some(unpack) = flags.bool("unpack") {
            self.check_unpack(unpack, &source_paths)?;
        }

        let parents = flags.is_true("parents");
        let mut created_by = keyword.to_owned();
        if parents {
            created_by.push_str(" --parents");
        }
        if let Some(chown) = &chown {
            created_by.push_str(&format!(" --chown={chown}"));
        }
        if let Some(chmod) = &chmod {
            created_by.push_str(&format!(" --chmod={chmod}"));
        }
        for source in &source_paths {
            created_by.push_str(&format!(" {source}"));
        }
        for file in &inline {
            created_by.push_str(&format!(" <<{}", file.name));
        }
        created_by.push_str(&format!(" {dest_written} # buildkit"));

        let mut effects = Vec::with_capacity(1 + inline.len());
        // BuildKit's dispatchCopy takes the linked path only without
        // --chmod; with it, a --link copy is an ordinary copy.
        let link = flags.is_true("link") && chmod.is_none();
        let excludes = flags.values("exclude").to_vec();
        if !source_paths.is_empty() {
            effects.push(if add {
                Effect::Add(AddFiles {
                    sources: source_paths,
                    dest: dest.clone(),
                    chown: chown.clone(),
                    chmod: chmod.clone(),
                    link,
                    excludes,
                    checksum,
                    keep_git_dir: flags.is_true("keep-git-dir"),
                })
            } else {
                Effect::Copy(CopyFiles {
                    sources: source_paths,
                    from,
                    dest: dest.clone(),
                    chown: chown.clone(),
                    chmod: chmod.clone(),
                    link,
                    parents,
                    excludes,
                })
            });
        }
        for file in inline {
            effects.push(Effect::WriteFile(WriteFile {
                path: file_in(&dest, &file.name),
                content: file.content.into_bytes(),
                mode: mode
                    .as_ref()
                    .map_or(HEREDOC_MODE, |m| m.apply(HEREDOC_MODE, false)),
                chown: chown.clone(),
            }));
        }
        Ok(Outcome::new(effects).created_by(created_by))
    }

    /// The file a `<<NAME` source becomes, its body expanded unless the
    /// delimiter was quoted.
    fn inline_file(&self, name: String) -> Result<InlineFile, PluginError> {
        // BuildKit takes an unknown heredoc (a marker in the JSON form) as empty.
        let Some(heredoc) = self.instruction.heredocs.iter().find(|h| h.name == name) else {
            return Ok(InlineFile {
                name,
                content: String::new(),
            });
        };
        let content = if heredoc.expand {
            self.expand(&words::heredoc_body_for_host(
                &heredoc.content,
                self.escape(),
            ))?
        } else {
            heredoc.content.clone()
        };
        Ok(InlineFile { name, content })
    }

    /// `COPY --from`, which BuildKit takes literally: a stage name or index,
    /// or an image.
    fn copy_from(&self, flags: &Flags) -> Result<Option<String>, PluginError> {
        let Some(from) = flags.value("from").filter(|from| !from.is_empty()) else {
            return Ok(None);
        };
        if words::changes_when_expanded(from, self.escape()) {
            return Err(self.error(
                "variable expansion is not supported for --from, define a new stage with FROM using ARG from global scope as a workaround",
            ));
        }
        Ok(Some(from.to_owned()))
    }

    /// A string flag's expanded value; empty counts as not given.
    fn optional_flag(&self, flags: &Flags, name: &str) -> Result<Option<String>, PluginError> {
        match flags.value(name) {
            Some(value) => Ok(Some(self.expand(value)?).filter(|v| !v.is_empty())),
            None => Ok(None),
        }
    }

    /// `ADD --checksum`: one source, downloaded or cloned; a download's
    /// checksum must be a digest.
    fn check_checksum(&self, checksum: &str, sources: &[String]) -> Result<(), PluginError> {
        let [source] = sources else {
            return Err(self.error("checksum can't be specified for multiple sources"));
        };
        match sources::kind(source) {
            Kind::Local => Err(self.error("checksum requires HTTP(S) or Git sources")),
            Kind::Http => sources::check_digest(checksum).map_err(|e| self.error(e)),
            Kind::Git => Ok(()),
        }
    }

    /// `ADD --unpack`, accepted where it asks for what ADD does anyway:
    /// local archives are extracted, downloads are not.
    fn check_unpack(&self, unpack: bool, sources: &[String]) -> Result<(), PluginError> {
        for source in sources {
            let changes = match sources::kind(source) {
                Kind::Local => !unpack,
                Kind::Http => unpack,
                Kind::Git => false,
            };
            if changes {
                return Err(self
                    .error(format!(
                        "ADD --unpack={unpack} is not supported yet for {source}"
                    ))
                    .with_hint(
                        "kiln extracts local archives and keeps downloads as they are; \
                         drop --unpack, or extract with RUN",
                    ));
            }
        }
        Ok(())
    }
}

/// Where a file named `name` lands when copied to `dest`: inside it when it
/// names a directory (a trailing `/` or `/.`), else at `dest` itself.
fn file_in(dest: &str, name: &str) -> String {
    let name = name.rsplit('/').next().unwrap_or(name);
    if dest.ends_with('/') {
        format!("{dest}{name}")
    } else if let Some(dir) = dest.strip_suffix('.').filter(|d| d.ends_with('/')) {
        format!("{dir}{name}")
    } else {
        dest.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use kiln_plugin_sdk::{AddFiles, CopyFiles, Effect, WriteFile};

    use super::file_in;
    use crate::instructions::testing::*;

    fn copy_of(effect: &Effect) -> CopyFiles {
        match effect {
            Effect::Copy(copy) => copy.clone(),
            other => panic!("{other:?}"),
        }
    }

    fn add_of(effect: &Effect) -> AddFiles {
        match effect {
            Effect::Add(add) => add.clone(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn copy_resolves_the_destination_and_expands() {
        let mut state = state();
        state.config.workdir = Some("/app".into());
        let instr = with_flag(
            instruction("COPY", "a.txt $DIR/b/ sub/"),
            "chown",
            Some("$U:$U"),
        );
        let instr = with_flag(instr, "chmod", Some("0755"));
        let outcome = ok(instr, &state);
        assert_eq!(
            only_effect(&outcome),
            &Effect::Copy(CopyFiles {
                sources: strings(&["a.txt", "/srv/b/"]),
                from: None,
                dest: "/app/sub/".into(),
                chown: Some("app:app".into()),
                chmod: Some("0755".into()),
                link: false,
                parents: false,
                excludes: Vec::new(),
            })
        );
        assert_eq!(
            outcome.created_by.as_deref(),
            Some("COPY --chown=app:app --chmod=0755 a.txt /srv/b/ sub/ # buildkit")
        );
        let json = with_json(instruction("COPY", ""), &["my file", "."]);
        let copy = copy_of(only_effect(&ok(json, &state)));
        assert_eq!(
            (copy.sources, copy.dest),
            (strings(&["my file"]), "/app/".to_owned())
        );
        // BuildKit copies several sources to a destination without a slash.
        let several = copy_of(only_effect(&ok(instruction("COPY", "a b /dest"), &state)));
        assert_eq!(several.dest, "/dest");
    }

    #[test]
    fn copy_flags_pass_through() {
        let instr = instruction("COPY", "x /y");
        let instr = with_flag(instr, "from", Some("build"));
        let instr = with_flag(instr, "link", None);
        let instr = with_flag(instr, "parents", Some("true"));
        let instr = with_flag(instr, "exclude", Some("*.md"));
        let instr = with_flag(instr, "exclude", Some("$DIR"));
        let outcome = ok(instr, &state());
        assert_eq!(
            copy_of(only_effect(&outcome)),
            CopyFiles {
                sources: strings(&["x"]),
                from: Some("build".into()),
                dest: "/y".into(),
                chown: None,
                chmod: None,
                link: true,
                parents: true,
                excludes: strings(&["*.md", "$DIR"]),
            }
        );
        assert_eq!(
            outcome.created_by.as_deref(),
            Some("COPY --parents x /y # buildkit")
        );
        for from in ["0", "ghcr.io/a/b:1@sha256:00", "stage-1"] {
            let instr = with_flag(instruction("COPY", "a /b"), "from", Some(from));
            assert_eq!(
                copy_of(only_effect(&ok(instr, &state()))).from.as_deref(),
                Some(from)
            );
        }
        let off = with_flag(instruction("COPY", "a /b"), "link", Some("false"));
        let off = with_flag(off, "parents", Some("False"));
        let copy = copy_of(only_effect(&ok(off, &state())));
        assert!(!copy.link && !copy.parents);
        let empty = with_flag(instruction("COPY", "a /b"), "chmod", Some(""));
        let empty = with_flag(empty, "chown", Some("$EMPTY"));
        let empty = with_flag(empty, "from", Some(""));
        let copy = copy_of(only_effect(&ok(empty, &state())));
        assert_eq!((copy.chmod, copy.chown, copy.from), (None, None, None));
    }

    #[test]
    fn copy_from_is_never_expanded() {
        for from in ["$STAGE", "${STAGE}", "a\\b", "'a'"] {
            let instr = with_flag(instruction("COPY", "a /b"), "from", Some(from));
            assert_eq!(
                err(instr, &state()),
                "line 7: variable expansion is not supported for --from, define a new stage with FROM using ARG from global scope as a workaround",
                "{from}"
            );
        }
    }

    #[test]
    fn chmod_octal_and_symbolic() {
        let chmod = |mode: &str| {
            let instr = with_flag(instruction("COPY", "a /b"), "chmod", Some(mode));
            handle(&VARS, &instr, &state()).map_err(|e| e.message)
        };
        for mode in ["u+x", "go-w", "a=rX", "u=rwx,go=rx", "0644", "7777"] {
            let outcome = chmod(mode).unwrap();
            assert_eq!(copy_of(only_effect(&outcome)).chmod.as_deref(), Some(mode));
            assert_eq!(
                outcome.created_by,
                Some(format!("COPY --chmod={mode} a /b # buildkit"))
            );
        }
        assert_eq!(
            chmod("888").unwrap_err(),
            "line 7: invalid chmod parameter: '888'. it should be octal string and between 0 and 07777"
        );
        assert!(chmod("17777").unwrap_err().contains("between 0 and 07777"));
        assert_eq!(chmod("u+q").unwrap_err(), "line 7: invalid syntax");
        assert_eq!(chmod("u+x,").unwrap_err(), "line 7: invalid syntax");
    }

    #[test]
    fn copy_errors() {
        assert_eq!(
            err(instruction("COPY", "only"), &state()),
            "line 7: COPY requires at least two arguments, but only one was provided. Destination could not be determined"
        );
        assert_eq!(
            err(instruction("COPY", "a <<EOF"), &state()),
            "line 7: COPY cannot accept a heredoc as a destination"
        );
        assert_eq!(
            err(instruction("COPY", "https://example.com/a /b"), &state()),
            "line 7: source can't be a URL for COPY"
        );
        assert_eq!(
            err(instruction("COPY", "git@github.com:a/b.git /b"), &state()),
            "line 7: source can't be a git ref for COPY"
        );
        let checksum = with_flag(instruction("COPY", "a /b"), "checksum", Some("sha256:x"));
        assert_eq!(err(checksum, &state()), "line 7: unknown flag: --checksum");
        let keep = with_flag(instruction("COPY", "a /b"), "keep-git-dir", None);
        assert_eq!(err(keep, &state()), "line 7: unknown flag: --keep-git-dir");
        let twice = with_flag(instruction("COPY", "a /b"), "from", Some("a"));
        let twice = with_flag(twice, "from", Some("b"));
        assert_eq!(
            err(twice, &state()),
            "line 7: duplicate flag specified: --from"
        );
        let link = with_flag(instruction("COPY", "a /b"), "link", Some("yes"));
        assert_eq!(
            err(link, &state()),
            "line 7: expecting boolean value for flag --link, not: yes"
        );
        let failure = handle_err(instruction("COPY", "$FAIL /b"), &state());
        assert_eq!(failure.message, "line 7: COPY: bad substitution");
        assert_eq!(failure.hint.as_deref(), Some("fix it"));
    }

    #[test]
    fn copy_heredocs_become_files() {
        let mut state = state();
        state.config.workdir = Some("/w".into());
        let instr = with_heredoc(
            with_heredoc(
                instruction("COPY", "<<A <<'B' conf/"),
                "A",
                "hello \"$NAME\" 'x' \\$NAME\n",
                true,
            ),
            "B",
            "literal $NAME\n",
            false,
        );
        let instr = with_flag(instr, "chown", Some("$U"));
        let outcome = ok(instr, &state);
        assert_eq!(
            outcome.effects,
            vec![
                Effect::WriteFile(WriteFile {
                    path: "/w/conf/A".into(),
                    content: b"hello \"world\" 'x' $NAME\n".to_vec(),
                    mode: 0o644,
                    chown: Some("app".into()),
                }),
                Effect::WriteFile(WriteFile {
                    path: "/w/conf/B".into(),
                    content: b"literal $NAME\n".to_vec(),
                    mode: 0o644,
                    chown: Some("app".into()),
                }),
            ]
        );
        assert_eq!(
            outcome.created_by.as_deref(),
            Some("COPY --chown=app <<A <<B conf/ # buildkit")
        );

        let mixed = with_heredoc(
            instruction("COPY", "a.txt <<EOF /etc/app.conf"),
            "EOF",
            "x=1\n",
            true,
        );
        let mixed = with_flag(mixed, "chmod", Some("u+x"));
        let outcome = ok(mixed, &state);
        assert_eq!(copy_of(&outcome.effects[0]).sources, strings(&["a.txt"]));
        assert_eq!(
            outcome.effects[1],
            Effect::WriteFile(WriteFile {
                path: "/etc/app.conf".into(),
                content: b"x=1\n".to_vec(),
                mode: 0o744,
                chown: None,
            })
        );
        assert_eq!(
            outcome.created_by.as_deref(),
            Some("COPY --chmod=u+x a.txt <<EOF /etc/app.conf # buildkit")
        );
        let octal = with_flag(
            with_heredoc(instruction("COPY", "<<EOF /x/"), "EOF", "", true),
            "chmod",
            Some("600"),
        );
        match only_effect(&ok(octal, &state)) {
            Effect::WriteFile(file) => {
                assert_eq!((file.mode, file.path.as_str()), (0o600, "/x/EOF"))
            }
            other => panic!("{other:?}"),
        }
        let json = with_json(instruction("COPY", ""), &["<<EOF", "/x"]);
        assert_eq!(
            only_effect(&ok(json, &state)),
            &Effect::WriteFile(WriteFile {
                path: "/x".into(),
                content: Vec::new(),
                mode: 0o644,
                chown: None
            })
        );
    }

    #[test]
    fn heredoc_bodies_expand_with_backslash_even_under_a_backtick_escape() {
        let mut state = state();
        state.escape = "`".into();
        let instr = with_heredoc(
            instruction("COPY", "<<EOF /f"),
            "EOF",
            "a `$NAME` \\$NAME \"$A\"\n",
            true,
        );
        let outcome = handle(&BACKTICK_VARS, &instr, &state).unwrap();
        match only_effect(&outcome) {
            Effect::WriteFile(file) => assert_eq!(
                String::from_utf8(file.content.clone()).unwrap(),
                "a `world` $NAME \"1\"\n"
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn add_sources_and_flags() {
        let instr = instruction(
            "ADD",
            "https://example.com/a.tgz https://github.com/moby/buildkit.git#v1 app.tar.gz /opt/",
        );
        let instr = with_flag(instr, "link", Some("true"));
        let instr = with_flag(instr, "keep-git-dir", None);
        let instr = with_flag(instr, "exclude", Some("*.log"));
        let instr = with_flag(instr, "chown", Some("1:2"));
        let outcome = ok(instr, &state());
        assert_eq!(
            add_of(only_effect(&outcome)),
            AddFiles {
                sources: strings(&[
                    "https://example.com/a.tgz",
                    "https://github.com/moby/buildkit.git#v1",
                    "app.tar.gz"
                ]),
                dest: "/opt/".into(),
                chown: Some("1:2".into()),
                chmod: None,
                link: true,
                excludes: strings(&["*.log"]),
                checksum: None,
                keep_git_dir: true,
            }
        );
        assert_eq!(
            outcome.created_by.as_deref(),
            Some(
                "ADD --chown=1:2 https://example.com/a.tgz https://github.com/moby/buildkit.git#v1 app.tar.gz /opt/ # buildkit"
            )
        );
        let heredoc = with_heredoc(instruction("ADD", "<<EOF /f"), "EOF", "$A\n", true);
        assert_eq!(
            only_effect(&ok(heredoc, &state())),
            &Effect::WriteFile(WriteFile {
                path: "/f".into(),
                content: b"1\n".to_vec(),
                mode: 0o644,
                chown: None
            })
        );
    }

    #[test]
    fn add_checksums() {
        let digest = format!("sha256:{}", "0".repeat(64));
        let add = |text: &str, sum: &str| {
            let instr = with_flag(instruction("ADD", text), "checksum", Some(sum));
            handle(&VARS, &instr, &state()).map_err(|e| e.message)
        };
        let outcome = add("https://example.com/a.tgz /a", &digest).unwrap();
        assert_eq!(add_of(only_effect(&outcome)).checksum, Some(digest.clone()));
        assert_eq!(
            outcome.created_by.as_deref(),
            Some("ADD https://example.com/a.tgz /a # buildkit")
        );
        assert!(add("git@github.com:a/b.git /a", "0123abcd").is_ok());
        assert_eq!(
            add("https://example.com/a.tgz /a", "sha256:abc").unwrap_err(),
            "line 7: invalid checksum digest length"
        );
        assert_eq!(
            add("https://example.com/a.tgz /a", "abc").unwrap_err(),
            "line 7: invalid checksum digest format"
        );
        assert_eq!(
            add("a.tgz /a", &digest).unwrap_err(),
            "line 7: checksum requires HTTP(S) or Git sources"
        );
        assert_eq!(
            add("https://x/a https://x/b /a/", &digest).unwrap_err(),
            "line 7: checksum can't be specified for multiple sources"
        );
        let empty = with_flag(instruction("ADD", "a /b"), "checksum", Some("$EMPTY"));
        assert_eq!(add_of(only_effect(&ok(empty, &state()))).checksum, None);
    }

    #[test]
    fn add_rejects_copy_only_flags_and_unsupported_unpacking() {
        for flag in ["from", "parents"] {
            let instr = with_flag(instruction("ADD", "a /b"), flag, Some("x"));
            assert_eq!(
                err(instr, &state()),
                format!("line 7: unknown flag: --{flag}")
            );
        }
        let unpack = |text: &str, value: &str| {
            let instr = with_flag(instruction("ADD", text), "unpack", Some(value));
            handle(&VARS, &instr, &state()).map_err(|e| e.message)
        };
        assert!(unpack("a.tar /b", "true").is_ok());
        assert!(unpack("https://x/a.tar /b", "false").is_ok());
        assert_eq!(
            unpack("a.tar /b", "false").unwrap_err(),
            "line 7: ADD --unpack=false is not supported yet for a.tar"
        );
        assert_eq!(
            unpack("https://x/a.tar /b", "true").unwrap_err(),
            "line 7: ADD --unpack=true is not supported yet for https://x/a.tar"
        );
        assert_eq!(
            err(instruction("ADD", "a"), &state()),
            "line 7: ADD requires at least two arguments, but only one was provided. Destination could not be determined"
        );
    }

    #[test]
    fn heredoc_file_paths() {
        assert_eq!(file_in("/a/", "EOF"), "/a/EOF");
        assert_eq!(file_in("/a/.", "EOF"), "/a/EOF");
        assert_eq!(file_in("/.", "EOF"), "/EOF");
        assert_eq!(file_in("/a", "EOF"), "/a");
        assert_eq!(file_in("/a/", "x/y"), "/a/y");
    }
}
