//! How to reach one registry in one direction: whether plain http may be
//! tried, whether certificates are verified, which extra CAs and which
//! client certificate apply. The choice is pure; the PEM files it names are
//! read once, when the client is made, so a bad file fails the build early.
//! CAs in `SSL_CERT_FILE` and `SSL_CERT_DIR` (as OpenSSL and Go read them)
//! are trusted besides Mozilla's roots for every registry, so a CA bundle
//! mounted into the kiln image works as it does for kaniko.

use super::client::{RegistryOptions, is_loopback};
use super::reference::DOCKER_HUB;
use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use ureq::tls::{Certificate, ClientCert, PemItem, PrivateKey, RootCerts, TlsConfig};

/// Which way an image travels: `--insecure` and `--skip-tls-verify` apply to
/// pushes, `--insecure-pull` and `--skip-tls-verify-pull` to pulls.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Reading manifests and blobs.
    Pull,
    /// Writing blobs and manifests.
    Push,
}

/// The transport of one registry in one direction.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub(super) struct Route {
    /// Plain http may follow a failed https ping.
    pub plain_http: bool,
    /// The TLS settings; equal settings share one agent.
    pub tls: TlsChoice,
}

/// TLS settings, by the files they name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub(super) struct TlsChoice {
    /// Accept any certificate.
    pub skip_verify: bool,
    /// PEM files of CAs trusted besides the public roots.
    pub extra_cas: Vec<PathBuf>,
    /// PEM files of the client certificate chain and its key, for mTLS.
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

/// A registry name as users write it in flags: `https://` and a trailing
/// `/` dropped, lowercase, Docker Hub's aliases folded into one.
fn normalise(name: &str) -> String {
    let n = name
        .trim()
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_ascii_lowercase();
    match n.as_str() {
        "docker.io" | "registry-1.docker.io" | "index.docker.io" => DOCKER_HUB.to_owned(),
        _ => n,
    }
}

/// Whether a registry named in a flag is `registry` (`host[:port]`).
pub(super) fn same_registry(flag: &str, registry: &str) -> bool {
    normalise(flag) == normalise(registry)
}

/// The transport for `registry` in direction `dir`, decided from the options.
pub(super) fn route(opts: &RegistryOptions, registry: &str, dir: Direction) -> Route {
    let listed = |list: &[String]| list.iter().any(|r| same_registry(r, registry));
    let (insecure, skip_verify) = match dir {
        Direction::Pull => (opts.insecure_pull, opts.skip_tls_verify_pull),
        Direction::Push => (opts.insecure_push, opts.skip_tls_verify_push),
    };
    Route {
        plain_http: insecure || is_loopback(registry) || listed(&opts.insecure_registries),
        tls: TlsChoice {
            skip_verify: skip_verify || listed(&opts.skip_tls_verify_registries),
            extra_cas: opts
                .registry_certificates
                .iter()
                .filter(|(r, _)| same_registry(r, registry))
                .map(|(_, p)| p.clone())
                .collect(),
            client_cert: opts
                .registry_client_certs
                .iter()
                .find(|(r, _, _)| same_registry(r, registry))
                .map(|(_, c, k)| (c.clone(), k.clone())),
        },
    }
}

/// The certificates and keys that the options name, read and parsed.
#[derive(Default)]
pub(super) struct TlsMaterial {
    cas: HashMap<PathBuf, Vec<Certificate<'static>>>,
    clients: HashMap<(PathBuf, PathBuf), ClientCert>,
    /// The CAs of `SSL_CERT_FILE` and `SSL_CERT_DIR`, trusted everywhere;
    /// read on the first verified connection, since a directory of them
    /// costs milliseconds that builds against plain-HTTP registries need not pay.
    environment: std::sync::OnceLock<Vec<Certificate<'static>>>,
    /// `SSL_CERT_FILE` and `SSL_CERT_DIR` as kiln found them.
    environment_vars: (Option<std::ffi::OsString>, Option<std::ffi::OsString>),
}

/// The CAs in `file` (`SSL_CERT_FILE`) and in the files of `dirs`
/// (`SSL_CERT_DIR`, colon-separated), each certificate once. A bad or
/// missing file is skipped with a warning rather than failing every build
/// on a machine whose variables point somewhere stale.
fn environment_cas_in(file: Option<&OsStr>, dirs: Option<&OsStr>) -> Vec<Certificate<'static>> {
    let mut files: Vec<PathBuf> = file
        .filter(|f| !f.is_empty())
        .map(PathBuf::from)
        .into_iter()
        .collect();
    for dir in dirs.into_iter().flat_map(std::env::split_paths) {
        if dir.as_os_str().is_empty() {
            continue;
        }
        match std::fs::read_dir(&dir) {
            Ok(entries) => {
                let mut found: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
                found.sort();
                files.extend(found);
            }
            Err(e) => log::warn!("SSL_CERT_DIR: cannot list {}: {e}", dir.display()),
        }
    }
    // A CA directory is mostly links (c_rehash's hash names and Debian's
    // `.pem` names) to the same files, and often holds the bundle that
    // SSL_CERT_FILE names: each file is read once.
    let mut read = HashSet::new();
    files.retain(|p| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && read.insert((m.dev(), m.ino())))
    });
    let mut seen = HashSet::new();
    let mut roots = Vec::new();
    for path in files {
        match certificates(&path) {
            Ok(certs) => roots.extend(certs.into_iter().filter(|c| seen.insert(c.der().to_vec()))),
            Err(bad) => log::debug!("not using {} as a CA: {}", bad.path.display(), bad.detail),
        }
    }
    roots
}

/// The CAs of `SSL_CERT_FILE` and `SSL_CERT_DIR` as DER, read now, for
/// TLS clients other than the registry's (plugins' `wasi:http`).
pub fn environment_cas() -> Vec<Vec<u8>> {
    environment_cas_in(
        std::env::var_os("SSL_CERT_FILE").as_deref(),
        std::env::var_os("SSL_CERT_DIR").as_deref(),
    )
    .iter()
    .map(|c| c.der().to_vec())
    .collect()
}

/// A PEM file that cannot be used: which, and why.
#[derive(Debug)]
pub(super) struct BadPem {
    /// The file.
    pub path: PathBuf,
    /// What is wrong with it.
    pub detail: String,
}

fn read_pem(path: &Path) -> Result<Vec<PemItem<'static>>, BadPem> {
    let bad = |detail: String| BadPem {
        path: path.to_owned(),
        detail,
    };
    let bytes = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    ureq::tls::parse_pem(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("not valid PEM: {e}")))
}

fn certificates(path: &Path) -> Result<Vec<Certificate<'static>>, BadPem> {
    let certs: Vec<_> = read_pem(path)?
        .into_iter()
        .filter_map(|item| match item {
            PemItem::Certificate(c) => Some(c),
            _ => None,
        })
        .collect();
    if certs.is_empty() {
        return Err(BadPem {
            path: path.to_owned(),
            detail: "it holds no PEM certificate (-----BEGIN CERTIFICATE-----)".to_owned(),
        });
    }
    Ok(certs)
}

fn private_key(path: &Path) -> Result<PrivateKey<'static>, BadPem> {
    read_pem(path)?
        .into_iter()
        .find_map(|item| match item {
            PemItem::PrivateKey(k) => Some(k),
            _ => None,
        })
        .ok_or_else(|| BadPem {
            path: path.to_owned(),
            detail: "it holds no PEM private key (PKCS#8, PKCS#1 or SEC1)".to_owned(),
        })
}

impl TlsMaterial {
    /// Reads every CA file and client certificate the options name.
    pub(super) fn load(opts: &RegistryOptions) -> Result<TlsMaterial, BadPem> {
        let mut m = TlsMaterial {
            environment_vars: (
                std::env::var_os("SSL_CERT_FILE"),
                std::env::var_os("SSL_CERT_DIR"),
            ),
            ..TlsMaterial::default()
        };
        for (_, path) in &opts.registry_certificates {
            if let Entry::Vacant(slot) = m.cas.entry(path.clone()) {
                slot.insert(certificates(path)?);
            }
        }
        for (_, cert, key) in &opts.registry_client_certs {
            if let Entry::Vacant(slot) = m.clients.entry((cert.clone(), key.clone())) {
                let chain = certificates(cert)?;
                slot.insert(ClientCert::new_with_certs(&chain, private_key(key)?));
            }
        }
        Ok(m)
    }

    /// The `ureq` TLS configuration for `choice`.
    pub(super) fn config(&self, choice: &TlsChoice) -> TlsConfig {
        let mut b = TlsConfig::builder()
            .disable_verification(choice.skip_verify)
            .client_cert(
                choice
                    .client_cert
                    .as_ref()
                    .and_then(|pair| self.clients.get(pair).cloned()),
            );
        let environment: &[Certificate<'static>] = if choice.skip_verify {
            &[]
        } else {
            self.environment.get_or_init(|| {
                let (file, dirs) = &self.environment_vars;
                environment_cas_in(file.as_deref(), dirs.as_deref())
            })
        };
        if !choice.extra_cas.is_empty() || !environment.is_empty() {
            let mut roots: Vec<Certificate<'static>> = webpki_root_certs::TLS_SERVER_ROOT_CERTS
                .iter()
                .map(|c| Certificate::from_der(c.as_ref()))
                .collect();
            roots.extend(environment.iter().cloned());
            for path in &choice.extra_cas {
                roots.extend(self.cas.get(path).into_iter().flatten().cloned());
            }
            b = b.root_certs(RootCerts::Specific(Arc::new(roots)));
        }
        b.build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> RegistryOptions {
        RegistryOptions {
            insecure_registries: vec!["plain.io:5000".into()],
            skip_tls_verify_registries: vec!["https://self.signed/".into(), "docker.io".into()],
            registry_certificates: vec![
                ("corp.io".into(), "/ca1.pem".into()),
                ("other.io".into(), "/ca2.pem".into()),
                ("corp.io".into(), "/ca3.pem".into()),
            ],
            registry_client_certs: vec![("MTLS.io:443".into(), "/c.pem".into(), "/k.pem".into())],
            ..RegistryOptions::default()
        }
    }

    #[test]
    fn registry_names_in_flags_are_normalised() {
        assert!(same_registry("docker.io", "index.docker.io"));
        assert!(same_registry("registry-1.docker.io", "index.docker.io"));
        assert!(same_registry("https://Corp.IO:5000/", "corp.io:5000"));
        assert!(!same_registry("corp.io", "corp.io:5000"));
        assert!(!same_registry("corp.io", "sub.corp.io"));
    }

    #[test]
    fn plain_http_follows_direction_lists_and_loopback() {
        let mut o = opts();
        assert!(!route(&o, "gcr.io", Direction::Pull).plain_http);
        assert!(route(&o, "plain.io:5000", Direction::Pull).plain_http);
        assert!(route(&o, "plain.io:5000", Direction::Push).plain_http);
        assert!(!route(&o, "plain.io", Direction::Push).plain_http);
        assert!(route(&o, "127.0.0.1:5000", Direction::Push).plain_http);
        o.insecure_pull = true;
        assert!(route(&o, "gcr.io", Direction::Pull).plain_http);
        assert!(!route(&o, "gcr.io", Direction::Push).plain_http);
        o.insecure_pull = false;
        o.insecure_push = true;
        assert!(!route(&o, "gcr.io", Direction::Pull).plain_http);
        assert!(route(&o, "gcr.io", Direction::Push).plain_http);
    }

    #[test]
    fn verification_is_skipped_by_direction_or_registry() {
        let mut o = opts();
        assert!(!route(&o, "gcr.io", Direction::Pull).tls.skip_verify);
        assert!(route(&o, "self.signed", Direction::Pull).tls.skip_verify);
        assert!(route(&o, "self.signed", Direction::Push).tls.skip_verify);
        assert!(
            route(&o, "index.docker.io", Direction::Push)
                .tls
                .skip_verify
        );
        o.skip_tls_verify_push = true;
        assert!(route(&o, "gcr.io", Direction::Push).tls.skip_verify);
        assert!(!route(&o, "gcr.io", Direction::Pull).tls.skip_verify);
        o.skip_tls_verify_pull = true;
        assert!(route(&o, "gcr.io", Direction::Pull).tls.skip_verify);
    }

    #[test]
    fn certificates_are_chosen_per_registry() {
        let o = opts();
        let corp = route(&o, "corp.io", Direction::Pull).tls;
        assert_eq!(
            corp.extra_cas,
            vec![PathBuf::from("/ca1.pem"), PathBuf::from("/ca3.pem")]
        );
        assert_eq!(corp.client_cert, None);
        let mtls = route(&o, "mtls.io:443", Direction::Push).tls;
        assert!(mtls.extra_cas.is_empty());
        assert_eq!(
            mtls.client_cert,
            Some((PathBuf::from("/c.pem"), PathBuf::from("/k.pem")))
        );
        assert_eq!(
            route(&o, "gcr.io", Direction::Push).tls,
            TlsChoice::default()
        );
    }

    /// A real CA certificate as PEM: one of Mozilla's roots.
    fn pem(index: usize) -> (Vec<u8>, String) {
        use base64::Engine as _;
        let der = webpki_root_certs::TLS_SERVER_ROOT_CERTS[index]
            .as_ref()
            .to_vec();
        let body = base64::engine::general_purpose::STANDARD.encode(&der);
        let lines: Vec<&str> = body
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        let text = format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            lines.join("\n")
        );
        (der, text)
    }

    #[test]
    fn ssl_cert_file_and_dir_add_each_ca_once() {
        let dir = tempfile::tempdir().unwrap();
        let (der0, pem0) = pem(0);
        let (der1, pem1) = pem(1);
        let (der2, pem2) = pem(2);
        let bundle = dir.path().join("bundle.crt");
        std::fs::write(&bundle, format!("{pem0}{pem1}")).unwrap();
        let certs = dir.path().join("certs");
        let other = dir.path().join("other");
        std::fs::create_dir(&certs).unwrap();
        std::fs::create_dir(&other).unwrap();
        // A hash link and its target (as c_rehash makes), a non-PEM file,
        // a duplicate of the bundle, and a second directory.
        std::fs::write(certs.join("corp.pem"), &pem2).unwrap();
        std::os::unix::fs::symlink(certs.join("corp.pem"), certs.join("1a2b3c4d.0")).unwrap();
        std::fs::write(certs.join("README"), "not a certificate\n").unwrap();
        std::fs::write(other.join("dup.pem"), &pem1).unwrap();
        let dirs = std::env::join_paths([&certs, &other, &dir.path().join("missing")]).unwrap();
        let got: Vec<Vec<u8>> = environment_cas_in(Some(bundle.as_os_str()), Some(&dirs))
            .iter()
            .map(|c| c.der().to_vec())
            .collect();
        assert_eq!(got, vec![der0, der1, der2]);
        assert!(environment_cas_in(None, None).is_empty());
        let missing = dir.path().join("nope.crt");
        assert!(environment_cas_in(Some(missing.as_os_str()), Some(OsStr::new(""))).is_empty());
    }

    #[test]
    fn unusable_pem_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not pem at all\n").unwrap();
        for path in [&missing, &empty] {
            let o = RegistryOptions {
                registry_certificates: vec![("r.io".into(), path.clone())],
                ..RegistryOptions::default()
            };
            let err = TlsMaterial::load(&o).err().expect("must fail");
            assert_eq!(&err.path, path);
        }
        let err = certificates(&empty).unwrap_err();
        assert!(err.detail.contains("no PEM certificate"), "{}", err.detail);
        let err = private_key(&empty).unwrap_err();
        assert!(err.detail.contains("no PEM private key"), "{}", err.detail);
    }
}
