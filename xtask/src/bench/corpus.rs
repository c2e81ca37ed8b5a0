//! The benchmark corpus: each case's Dockerfile and the build context it is
//! built from, generated on disk before any builder runs.

use anyhow::{Context, Result};
use std::fs;
use std::io::{BufWriter, Write};
use std::path::Path;

/// The base image a case starts from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Base {
    /// Busybox from Debian's `busybox-static`.
    Busybox,
    /// Debian bookworm made by debootstrap.
    Debian,
}

/// Extra files a case's context holds besides its Dockerfile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Payload {
    /// The Dockerfile alone.
    None,
    /// `files/dNNN/fNNNNN`: this many small files, 100 per directory.
    SmallFiles(usize),
    /// `big.bin`: this many bytes of incompressible pseudo-random data.
    BigFile(u64),
}

/// One case of the corpus.
#[derive(Debug)]
pub struct Case {
    /// The name used on the command line, in tags and in the report.
    pub name: &'static str,
    /// What the case exercises, for the report.
    pub about: &'static str,
    /// The base image, substituted for `{base}` in the Dockerfile.
    pub base: Base,
    /// The Dockerfile, with `{base}` standing for the base image reference.
    pub dockerfile: &'static str,
    /// What the context holds besides the Dockerfile.
    pub payload: Payload,
}

/// The number of files of `copy-many`.
const MANY_FILES: usize = 20_000;

/// The size of `big-file`'s file: 500 MiB.
pub const BIG_FILE_BYTES: u64 = 500 << 20;

/// Every case, smallest first; `--smoke` runs the first [`SMOKE_CASES`].
pub const CASES: &[Case] = &[
    Case {
        name: "label-only",
        about: "busybox, LABEL, ENV, ENTRYPOINT: no layer",
        base: Base::Busybox,
        dockerfile: "FROM {base}\nLABEL org.example.bench=label-only\nENV BENCH=1\n\
                     ENTRYPOINT [\"/bin/sh\", \"-c\"]\n",
        payload: Payload::None,
    },
    Case {
        name: "run-small",
        about: "one RUN writing 100 small files",
        base: Base::Busybox,
        dockerfile: "FROM {base}\n\
                     RUN mkdir /out && for i in $(seq 1 100); do echo $i > /out/f$i; done\n",
        payload: Payload::None,
    },
    Case {
        name: "multi-stage",
        about: "two independent stages, a final stage with COPY --from both",
        base: Base::Busybox,
        dockerfile: "FROM {base} AS a\n\
                     RUN mkdir /a && for i in $(seq 1 50); do echo a$i > /a/f$i; done\n\
                     FROM {base} AS b\n\
                     RUN mkdir /b && for i in $(seq 1 50); do echo b$i > /b/f$i; done\n\
                     FROM {base}\n\
                     COPY --from=a /a /a\n\
                     COPY --from=b /b /b\n",
        payload: Payload::None,
    },
    Case {
        name: "copy-many",
        about: "COPY of 20,000 small files, then one RUN",
        base: Base::Busybox,
        dockerfile: "FROM {base}\nCOPY files /files\n\
                     RUN find /files -type f | wc -l > /file-count\n",
        payload: Payload::SmallFiles(MANY_FILES),
    },
    Case {
        name: "big-file",
        about: "COPY of one 500 MiB random file",
        base: Base::Busybox,
        dockerfile: "FROM {base}\nCOPY big.bin /big.bin\n",
        payload: Payload::BigFile(BIG_FILE_BYTES),
    },
    Case {
        name: "apt",
        about: "Debian bookworm, apt-get install curl from the Debian mirror",
        base: Base::Debian,
        dockerfile: "FROM {base}\n\
                     RUN apt-get update && apt-get install -y --no-install-recommends curl \
                     && rm -rf /var/lib/apt/lists/*\n",
        payload: Payload::None,
    },
    Case {
        name: "many-layers",
        about: "30 RUN steps on Debian bookworm",
        base: Base::Debian,
        dockerfile: MANY_LAYERS,
        payload: Payload::None,
    },
];

/// How many of the first [`CASES`] `--smoke` runs.
pub const SMOKE_CASES: usize = 3;

const MANY_LAYERS: &str = "FROM {base}
RUN echo 1 > /layer-01
RUN echo 2 > /layer-02
RUN echo 3 > /layer-03
RUN echo 4 > /layer-04
RUN echo 5 > /layer-05
RUN echo 6 > /layer-06
RUN echo 7 > /layer-07
RUN echo 8 > /layer-08
RUN echo 9 > /layer-09
RUN echo 10 > /layer-10
RUN echo 11 > /layer-11
RUN echo 12 > /layer-12
RUN echo 13 > /layer-13
RUN echo 14 > /layer-14
RUN echo 15 > /layer-15
RUN echo 16 > /layer-16
RUN echo 17 > /layer-17
RUN echo 18 > /layer-18
RUN echo 19 > /layer-19
RUN echo 20 > /layer-20
RUN echo 21 > /layer-21
RUN echo 22 > /layer-22
RUN echo 23 > /layer-23
RUN echo 24 > /layer-24
RUN echo 25 > /layer-25
RUN echo 26 > /layer-26
RUN echo 27 > /layer-27
RUN echo 28 > /layer-28
RUN echo 29 > /layer-29
RUN echo 30 > /layer-30
";

/// The case called `name`.
pub fn find(name: &str) -> Option<&'static Case> {
    CASES.iter().find(|case| case.name == name)
}

/// The Dockerfile of `case` with `base` as its base image reference.
pub fn dockerfile(case: &Case, base: &str) -> String {
    case.dockerfile.replace("{base}", base)
}

/// Writes `case`'s context into the new directory `dir`, with `base` as
/// the base image reference.
pub fn write_context(case: &Case, base: &str, dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    fs::write(dir.join("Dockerfile"), dockerfile(case, base))?;
    match case.payload {
        Payload::None => Ok(()),
        Payload::SmallFiles(count) => write_small_files(&dir.join("files"), count),
        Payload::BigFile(bytes) => write_random_file(&dir.join("big.bin"), bytes),
    }
}

fn write_small_files(dir: &Path, count: usize) -> Result<()> {
    for i in 0..count {
        let sub = dir.join(format!("d{:03}", i / 100));
        if i % 100 == 0 {
            fs::create_dir_all(&sub).with_context(|| format!("cannot create {}", sub.display()))?;
        }
        fs::write(sub.join(format!("f{i:05}")), small_file_contents(i))?;
    }
    Ok(())
}

/// What small file `i` holds: a line that differs per file, a few dozen
/// bytes, as source trees mostly are.
fn small_file_contents(i: usize) -> String {
    format!("file {i} of the copy-many benchmark\n")
}

fn write_random_file(path: &Path, bytes: u64) -> Result<()> {
    let file =
        fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut written = 0;
    let mut block = [0u8; 1 << 16];
    while written < bytes {
        rng.fill(&mut block);
        let n = (bytes - written).min(block.len() as u64) as usize;
        out.write_all(&block[..n])?;
        written += n as u64;
    }
    out.flush()
        .with_context(|| format!("cannot write {}", path.display()))
}

/// xorshift64: fast, and random enough that gzip cannot shrink its output,
/// which is what makes big-file measure compression at its worst.
pub struct XorShift(pub u64);

impl XorShift {
    /// The next pseudo-random word.
    pub fn word(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Fills `block` with pseudo-random bytes.
    pub fn fill(&mut self, block: &mut [u8]) {
        for chunk in block.chunks_mut(8) {
            let word = self.word().to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn names_are_unique_and_smoke_cases_have_no_payload() {
        for (i, case) in CASES.iter().enumerate() {
            assert!(CASES[i + 1..].iter().all(|other| other.name != case.name));
            assert!(case.dockerfile.starts_with("FROM {base}"), "{}", case.name);
        }
        for case in &CASES[..SMOKE_CASES] {
            assert_eq!(case.payload, Payload::None, "{}", case.name);
            assert_eq!(case.base, Base::Busybox, "{}", case.name);
        }
        assert_eq!(
            MANY_LAYERS
                .lines()
                .filter(|l| l.starts_with("RUN "))
                .count(),
            30
        );
    }

    #[test]
    fn every_from_gets_the_base() {
        let text = dockerfile(
            find("multi-stage").unwrap(),
            "127.0.0.1:5000/library/busybox",
        );
        assert_eq!(
            text.lines()
                .filter(|l| l.starts_with("FROM 127.0.0.1:5000/library/busybox"))
                .count(),
            3
        );
        assert!(!text.contains("{base}"));
    }

    #[test]
    fn contexts_hold_the_payload() {
        let dir = std::env::temp_dir().join(format!("xtask-corpus-{}", std::process::id()));
        let case = Case {
            name: "t",
            about: "",
            base: Base::Busybox,
            dockerfile: "FROM {base}\n",
            payload: Payload::SmallFiles(250),
        };
        write_context(&case, "b", &dir.join("small")).unwrap();
        assert_eq!(
            fs::read_to_string(dir.join("small/Dockerfile")).unwrap(),
            "FROM b\n"
        );
        assert_eq!(
            fs::read_to_string(dir.join("small/files/d002/f00249")).unwrap(),
            "file 249 of the copy-many benchmark\n"
        );
        assert_eq!(fs::read_dir(dir.join("small/files")).unwrap().count(), 3);

        let big = Case {
            payload: Payload::BigFile(100_003),
            ..case
        };
        write_context(&big, "b", &dir.join("big")).unwrap();
        let mut data = Vec::new();
        fs::File::open(dir.join("big/big.bin"))
            .unwrap()
            .read_to_end(&mut data)
            .unwrap();
        assert_eq!(data.len(), 100_003);
        // Incompressible: every byte value shows up, none dominates.
        let mut counts = [0usize; 256];
        for byte in &data {
            counts[usize::from(*byte)] += 1;
        }
        assert!(counts.iter().all(|&c| c > 250 && c < 550), "{counts:?}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
