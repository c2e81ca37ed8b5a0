//! Image manifests and indexes (Docker schema 2 and OCI), their media types,
//! and the choice of one platform's manifest from an index.

use crate::digest::Digest;
use crate::image::config::Platform;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// Docker schema 2 image manifest.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker schema 2 manifest list.
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker image config.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Docker gzip-compressed layer.
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// Docker schema 1 manifest (refused).
pub const DOCKER_MANIFEST_V1: &str = "application/vnd.docker.distribution.manifest.v1+json";
/// Docker signed schema 1 manifest (refused).
pub const DOCKER_MANIFEST_V1_SIGNED: &str =
    "application/vnd.docker.distribution.manifest.v1+prettyjws";
/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image config.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// OCI uncompressed layer.
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// OCI gzip-compressed layer.
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// OCI zstd-compressed layer.
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

/// The `Accept` header value that asks a registry for any manifest kind kiln reads.
pub const ACCEPT_MANIFESTS: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.v2+json";

/// The annotation that names an image inside an OCI layout's `index.json`.
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Why a manifest or platform could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error(
        "Docker schema 1 manifests are not supported: re-push the image with a current Docker or registry client"
    )]
    SchemaV1,
    #[error(
        "unsupported manifest media type {0:?}: expected a Docker schema 2 or OCI manifest, manifest list or index"
    )]
    UnsupportedMediaType(String),
    #[error("manifest has neither `layers` nor `manifests` and no known media type")]
    UnknownKind,
}

/// A content descriptor: what a manifest or index points at.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type of the content.
    pub media_type: String,
    /// Digest of the content.
    pub digest: Digest,
    /// Size of the content in bytes.
    pub size: u64,
    /// Where else the content may be fetched (foreign layers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urls: Option<Vec<String>>,
    /// Free-form metadata, sorted by key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    /// The platform of the manifest an index entry points at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<DescriptorPlatform>,
}

/// The platform field of an index entry, as the OCI spec spells it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DescriptorPlatform {
    /// CPU architecture, e.g. `amd64`.
    pub architecture: String,
    /// Operating system, e.g. `linux`.
    pub os: String,
    /// OS version (Windows images).
    #[serde(
        rename = "os.version",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub os_version: Option<String>,
    /// Required OS features (Windows images).
    #[serde(
        rename = "os.features",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub os_features: Option<Vec<String>>,
    /// CPU variant, e.g. `v8`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

/// A single-platform image manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// Always 2.
    pub schema_version: u32,
    /// Absent in some valid OCI manifests (umoci omits it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The image config blob.
    pub config: Descriptor,
    /// The layer blobs, base first.
    pub layers: Vec<Descriptor>,
    /// Free-form metadata, sorted by key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// A multi-platform index (OCI) or manifest list (Docker).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    /// Always 2.
    pub schema_version: u32,
    /// The index's media type, when stated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// One entry per manifest (usually per platform).
    pub manifests: Vec<Descriptor>,
    /// Free-form metadata, sorted by key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// A parsed manifest document of either kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ManifestKind {
    /// A single-platform image.
    Image(Box<Manifest>),
    /// An index of per-platform manifests.
    Index(Index),
}

impl Manifest {
    /// The manifest as compact JSON with fields in a fixed order, so its digest is stable.
    pub fn to_canonical_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a manifest has only string keys and always serialises")
    }
}

impl Index {
    /// The index as compact JSON with fields in a fixed order, so its digest is stable.
    pub fn to_canonical_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an index has only string keys and always serialises")
    }
}

/// Reads a manifest document. The media type comes from the document itself,
/// else from the HTTP `Content-Type`, else from its shape: umoci and some
/// registries leave both out or send `application/json`.
pub fn parse_manifest(
    bytes: &[u8],
    content_type: Option<&str>,
) -> Result<ManifestKind, ManifestError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Probe {
        schema_version: Option<u32>,
        media_type: Option<String>,
        manifests: Option<serde::de::IgnoredAny>,
        layers: Option<serde::de::IgnoredAny>,
    }
    let probe: Probe = serde_json::from_slice(bytes)?;
    if probe.schema_version == Some(1) {
        return Err(ManifestError::SchemaV1);
    }
    let header = content_type
        .map(|c| c.split(';').next().unwrap_or_default().trim())
        .filter(|c| is_manifest_type(c));
    match probe.media_type.as_deref().or(header) {
        Some(DOCKER_MANIFEST | OCI_MANIFEST) => Ok(ManifestKind::Image(Box::new(
            serde_json::from_slice(bytes)?,
        ))),
        Some(DOCKER_MANIFEST_LIST | OCI_INDEX) => {
            Ok(ManifestKind::Index(serde_json::from_slice(bytes)?))
        }
        Some(DOCKER_MANIFEST_V1 | DOCKER_MANIFEST_V1_SIGNED) => Err(ManifestError::SchemaV1),
        Some(other) => Err(ManifestError::UnsupportedMediaType(other.to_owned())),
        None if probe.manifests.is_some() => {
            Ok(ManifestKind::Index(serde_json::from_slice(bytes)?))
        }
        None if probe.layers.is_some() => Ok(ManifestKind::Image(Box::new(
            serde_json::from_slice(bytes)?,
        ))),
        None => Err(ManifestError::UnknownKind),
    }
}

fn is_manifest_type(t: &str) -> bool {
    matches!(
        t,
        DOCKER_MANIFEST
            | OCI_MANIFEST
            | DOCKER_MANIFEST_LIST
            | OCI_INDEX
            | DOCKER_MANIFEST_V1
            | DOCKER_MANIFEST_V1_SIGNED
    )
}

/// `(os, architecture, variant)` with containerd's aliases folded, so that
/// `linux/aarch64`, `linux/arm64` and `linux/arm64/v8` compare equal.
fn normalize(os: &str, arch: &str, variant: Option<&str>) -> (String, String, String) {
    let os = match os.to_ascii_lowercase().as_str() {
        "macos" => "darwin".to_owned(),
        other => other.to_owned(),
    };
    let variant = variant.unwrap_or_default().to_ascii_lowercase();
    let (arch, variant) = match arch.to_ascii_lowercase().as_str() {
        "i386" => ("386".to_owned(), variant),
        "x86_64" | "x86-64" | "amd64" => {
            let v = if variant == "v1" {
                String::new()
            } else {
                variant
            };
            ("amd64".to_owned(), v)
        }
        "aarch64" | "arm64" => {
            let v = if matches!(variant.as_str(), "8" | "v8") {
                String::new()
            } else {
                variant
            };
            ("arm64".to_owned(), v)
        }
        "armhf" => ("arm".to_owned(), "v7".to_owned()),
        "armel" => ("arm".to_owned(), "v6".to_owned()),
        "arm" => {
            let v = match variant.as_str() {
                "" | "7" => "v7".to_owned(),
                "5" | "6" | "8" => format!("v{variant}"),
                _ => variant,
            };
            ("arm".to_owned(), v)
        }
        other => (other.to_owned(), variant),
    };
    (os, arch, variant)
}

impl fmt::Display for DescriptorPlatform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// Picks the entry of `index` for `wanted`: an exact match after alias
/// folding first; then, when `wanted` names no variant, any variant of its
/// os/architecture; last, an entry without a platform (valid OCI, the image
/// config then says what it is).
pub fn select_platform<'a>(index: &'a Index, wanted: &Platform) -> Option<&'a Descriptor> {
    let want = normalize(&wanted.os, &wanted.architecture, wanted.variant.as_deref());
    let of = |d: &Descriptor| {
        d.platform
            .as_ref()
            .map(|p| normalize(&p.os, &p.architecture, p.variant.as_deref()))
    };
    let loose = wanted.variant.is_none();
    index
        .manifests
        .iter()
        .find(|d| of(d).as_ref() == Some(&want))
        .or_else(|| {
            index.manifests.iter().find(|d| {
                loose && of(d).is_some_and(|(os, arch, _)| os == want.0 && arch == want.1)
            })
        })
        .or_else(|| index.manifests.iter().find(|d| d.platform.is_none()))
}

/// The platforms an index offers, for error messages.
pub fn platforms_of(index: &Index) -> Vec<String> {
    index
        .manifests
        .iter()
        .filter_map(|d| d.platform.as_ref().map(ToString::to_string))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(
        media_type: &str,
        data: &[u8],
        platform: Option<(&str, &str, Option<&str>)>,
    ) -> Descriptor {
        Descriptor {
            media_type: media_type.to_owned(),
            digest: Digest::of(data),
            size: data.len() as u64,
            urls: None,
            annotations: None,
            platform: platform.map(|(os, arch, variant)| DescriptorPlatform {
                architecture: arch.to_owned(),
                os: os.to_owned(),
                os_version: None,
                os_features: None,
                variant: variant.map(str::to_owned),
            }),
        }
    }

    fn index(entries: &[(&str, &str, Option<&str>)]) -> Index {
        Index {
            schema_version: 2,
            media_type: Some(OCI_INDEX.to_owned()),
            manifests: entries
                .iter()
                .map(|p| desc(OCI_MANIFEST, format!("{p:?}").as_bytes(), Some(*p)))
                .collect(),
            annotations: None,
        }
    }

    fn pick(ix: &Index, wanted: &str) -> Option<String> {
        let p = Platform::parse(wanted).unwrap();
        select_platform(ix, &p).map(|d| {
            d.platform
                .as_ref()
                .map_or("none".into(), ToString::to_string)
        })
    }

    #[test]
    fn canonical_json_has_fixed_field_order_and_no_whitespace() {
        let m = Manifest {
            schema_version: 2,
            media_type: Some(OCI_MANIFEST.to_owned()),
            config: desc(OCI_CONFIG, b"{}", None),
            layers: vec![desc(OCI_LAYER_GZIP, b"layer", None)],
            annotations: Some(BTreeMap::from([
                ("b".into(), "2".into()),
                ("a".into(), "1".into()),
            ])),
        };
        let json = String::from_utf8(m.to_canonical_json()).unwrap();
        let expected = format!(
            "{{\"schemaVersion\":2,\"mediaType\":\"{OCI_MANIFEST}\",\
             \"config\":{{\"mediaType\":\"{OCI_CONFIG}\",\"digest\":\"{}\",\"size\":2}},\
             \"layers\":[{{\"mediaType\":\"{OCI_LAYER_GZIP}\",\"digest\":\"{}\",\"size\":5}}],\
             \"annotations\":{{\"a\":\"1\",\"b\":\"2\"}}}}",
            Digest::of(b"{}"),
            Digest::of(b"layer"),
        );
        assert_eq!(json, expected);
        let back: Manifest = serde_json::from_str(&json).unwrap();
        assert_eq!(back, m);
    }

    #[test]
    fn manifest_without_media_type_is_read_by_shape() {
        let d = Digest::of(b"x");
        let umoci = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"{OCI_CONFIG}","digest":"{d}","size":1}},"layers":[]}}"#
        );
        let ManifestKind::Image(m) =
            parse_manifest(umoci.as_bytes(), Some("application/json")).unwrap()
        else {
            panic!("expected an image manifest");
        };
        assert_eq!(m.media_type, None);
        assert_eq!(m.config.digest, d);
        assert_eq!(m.to_canonical_json(), umoci.as_bytes());

        let ix = r#"{"schemaVersion":2,"manifests":[]}"#;
        assert!(matches!(
            parse_manifest(ix.as_bytes(), None).unwrap(),
            ManifestKind::Index(_)
        ));
    }

    #[test]
    fn content_type_decides_when_the_document_is_silent() {
        let ix = r#"{"schemaVersion":2,"manifests":[]}"#;
        let ct = format!("{DOCKER_MANIFEST_LIST}; charset=utf-8");
        assert!(matches!(
            parse_manifest(ix.as_bytes(), Some(&ct)).unwrap(),
            ManifestKind::Index(_)
        ));
    }

    #[test]
    fn schema1_and_unknown_types_are_refused_with_reasons() {
        let v1 = r#"{"schemaVersion":1,"name":"x","fsLayers":[]}"#;
        assert!(matches!(
            parse_manifest(v1.as_bytes(), None),
            Err(ManifestError::SchemaV1)
        ));
        let art = r#"{"schemaVersion":2,"mediaType":"application/vnd.example+json","layers":[]}"#;
        let err = parse_manifest(art.as_bytes(), None).unwrap_err();
        assert!(
            err.to_string().contains("application/vnd.example+json"),
            "{err}"
        );
        assert!(matches!(
            parse_manifest(b"{}", None),
            Err(ManifestError::UnknownKind)
        ));
        assert!(matches!(
            parse_manifest(b"not json", None),
            Err(ManifestError::Json(_))
        ));
    }

    #[test]
    fn bad_digest_in_descriptor_is_rejected() {
        let m = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"{OCI_CONFIG}","digest":"sha256:abc","size":1}},"layers":[]}}"#
        );
        assert!(matches!(
            parse_manifest(m.as_bytes(), None),
            Err(ManifestError::Json(_))
        ));
    }

    #[test]
    fn platform_selection_folds_aliases_and_variants() {
        let ix = index(&[
            ("linux", "amd64", None),
            ("linux", "arm", Some("v6")),
            ("linux", "arm", Some("v7")),
            ("linux", "arm64", Some("v8")),
            ("linux", "386", None),
            ("unknown", "unknown", None),
        ]);
        assert_eq!(pick(&ix, "linux/amd64").as_deref(), Some("linux/amd64"));
        assert_eq!(pick(&ix, "linux/x86_64").as_deref(), Some("linux/amd64"));
        assert_eq!(pick(&ix, "linux/arm64").as_deref(), Some("linux/arm64/v8"));
        assert_eq!(
            pick(&ix, "linux/arm64/v8").as_deref(),
            Some("linux/arm64/v8")
        );
        assert_eq!(
            pick(&ix, "linux/aarch64").as_deref(),
            Some("linux/arm64/v8")
        );
        assert_eq!(pick(&ix, "linux/arm").as_deref(), Some("linux/arm/v7"));
        assert_eq!(pick(&ix, "linux/arm/v6").as_deref(), Some("linux/arm/v6"));
        assert_eq!(pick(&ix, "linux/arm/6").as_deref(), Some("linux/arm/v6"));
        assert_eq!(pick(&ix, "linux/s390x"), None);
        assert_eq!(pick(&ix, "windows/amd64"), None);
        assert_eq!(pick(&ix, "linux/arm/v5"), None);
    }

    #[test]
    fn platform_selection_falls_back_in_order() {
        let v2_only = index(&[("linux", "amd64", Some("v2"))]);
        assert_eq!(
            pick(&v2_only, "linux/amd64").as_deref(),
            Some("linux/amd64/v2")
        );
        assert_eq!(pick(&v2_only, "linux/amd64/v3"), None);

        let arm64_bare = index(&[("linux", "arm64", None)]);
        assert_eq!(
            pick(&arm64_bare, "linux/arm64/v8").as_deref(),
            Some("linux/arm64")
        );

        let mut mixed = index(&[("linux", "arm64", None)]);
        mixed.manifests.push(desc(OCI_MANIFEST, b"any", None));
        assert_eq!(pick(&mixed, "linux/amd64").as_deref(), Some("none"));
        assert_eq!(pick(&mixed, "linux/arm64").as_deref(), Some("linux/arm64"));
    }

    #[test]
    fn platforms_are_listed_for_errors() {
        let ix = index(&[("linux", "amd64", None), ("linux", "arm64", Some("v8"))]);
        assert_eq!(platforms_of(&ix), ["linux/amd64", "linux/arm64/v8"]);
    }

    #[test]
    fn descriptor_platform_round_trips_dotted_fields() {
        let json = r#"{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","size":0,"platform":{"architecture":"amd64","os":"windows","os.version":"10.0.17763.1"}}"#;
        let d: Descriptor = serde_json::from_str(json).unwrap();
        assert_eq!(
            d.platform.as_ref().unwrap().os_version.as_deref(),
            Some("10.0.17763.1")
        );
        assert_eq!(serde_json::to_string(&d).unwrap(), json);
    }
}
