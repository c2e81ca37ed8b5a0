//! Turns the final stage into an image and writes it where it was asked to
//! go: registries (blobs first, manifest last), an OCI layout, and the
//! digest file.

use super::BuildError;
use super::stage::{Layer, Stage, StageCtx};
use crate::digest::Digest;
use crate::image::layout::write_oci_layout;
use crate::image::manifest::{self, Descriptor, Manifest};
use crate::image::tarball::write_docker_archive;
use crate::registry::{PushImage, PushOptions, Reference, RegistryError};

/// What a finished build produced.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// The manifest digest, as pushed and written to `--digest-file`.
    pub digest: Digest,
}

/// The manifest and media types for a set of layers: Docker schema 2, as
/// kaniko writes, unless OCI media types were asked for or a layer's
/// compression has no Docker media type.
fn layer_media_types(layers: &[Layer], oci_media_types: bool) -> (bool, Vec<String>) {
    let docker = !oci_media_types && layers.iter().all(|l| is_gzip(&l.desc.media_type));
    let types = layers
        .iter()
        .map(|l| match (docker, l.desc.media_type.as_str()) {
            (true, _) => manifest::DOCKER_LAYER_GZIP.to_owned(),
            (false, manifest::DOCKER_LAYER_GZIP) => manifest::OCI_LAYER_GZIP.to_owned(),
            (false, other) => other.to_owned(),
        })
        .collect();
    (docker, types)
}

fn is_gzip(media_type: &str) -> bool {
    media_type == manifest::DOCKER_LAYER_GZIP || media_type == manifest::OCI_LAYER_GZIP
}

/// Parses every `--destination`.
pub fn parse_destinations(destinations: &[String]) -> Result<Vec<Reference>, BuildError> {
    destinations
        .iter()
        .map(|d| {
            Reference::parse(d).map_err(|e| BuildError::Reference {
                reference: d.clone(),
                message: e.to_string(),
            })
        })
        .collect()
}

/// Writes the image of `stage` to every output in the options.
pub fn write(sctx: &StageCtx<'_>, stage: &Stage) -> Result<Outcome, BuildError> {
    let opts = sctx.opts;
    let store = sctx.store;
    let config_bytes = stage.config.to_canonical_json();
    let config_digest = store.put_bytes(&config_bytes)?;
    let (docker, media_types) = layer_media_types(&stage.layers, opts.oci_media_types);
    let layers: Vec<Descriptor> = stage
        .layers
        .iter()
        .zip(media_types)
        .map(|(l, media_type)| Descriptor {
            media_type,
            ..l.desc.clone()
        })
        .collect();
    let config_desc = Descriptor {
        media_type: if docker {
            manifest::DOCKER_CONFIG
        } else {
            manifest::OCI_CONFIG
        }
        .to_owned(),
        digest: config_digest,
        size: config_bytes.len() as u64,
        urls: None,
        annotations: None,
        platform: None,
    };
    let manifest_media_type = if docker {
        manifest::DOCKER_MANIFEST
    } else {
        manifest::OCI_MANIFEST
    };
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(manifest_media_type.to_owned()),
        config: config_desc.clone(),
        layers: layers.clone(),
        annotations: None,
    };
    let manifest_bytes = manifest.to_canonical_json();
    let digest = Digest::of(&manifest_bytes);

    let mut blobs: Vec<&Descriptor> = layers.iter().collect();
    blobs.push(&config_desc);
    let fetch = |d: &Digest| -> Result<(), RegistryError> {
        let Some(layer) = stage.layers.iter().find(|l| &l.desc.digest == d) else {
            return Ok(());
        };
        // A base layer may already be in the base-image cache (offline builds).
        if let Some(cache) = sctx.cache
            && cache.base.import_blob(d, store).unwrap_or(false)
        {
            return Ok(());
        }
        match &layer.source {
            Some(src) => sctx.registry.fetch_blob(src, d, store),
            None => Ok(()),
        }
    };

    let destinations = parse_destinations(&opts.destinations)?;
    let local_outputs = opts.oci_layout_path.is_some() || opts.tar_path.is_some();
    if local_outputs {
        for d in &blobs {
            if !store.has_blob(&d.digest) {
                fetch(&d.digest)?;
            }
        }
    }
    if let Some(dir) = &opts.oci_layout_path {
        // Without a destination the image is still named, so that
        // `skopeo inspect oci:DIR:latest` and `umoci ls` find it.
        let ref_name = destinations
            .first()
            .map_or_else(|| "latest".to_owned(), |r| r.tag_or_digest());
        let all: Vec<Descriptor> = blobs.iter().map(|d| (*d).clone()).collect();
        write_oci_layout(
            dir,
            &manifest_bytes,
            manifest_media_type,
            &all,
            store,
            Some(&ref_name),
        )?;
        log::info!("Wrote image to OCI layout {}", dir.display());
    }
    if let Some(path) = &opts.tar_path {
        let tags: Vec<String> = destinations
            .iter()
            .filter(|r| r.tag.is_some())
            .map(|r| r.to_string())
            .collect();
        write_docker_archive(path, &tags, &config_desc, &layers, store)?;
        log::info!("Wrote image tarball {}", path.display());
    }

    if !opts.no_push && !destinations.is_empty() {
        for dest in &opts.destinations {
            log::info!("Pushing image to {dest}");
        }
        let image = PushImage {
            manifest: &manifest_bytes,
            manifest_media_type,
            blobs: blobs.clone(),
            source: Some(&fetch),
        };
        // The cache pushers have put the build's new layers in a registry
        // cache repository, if there is one.
        let cache_repo = sctx
            .cache
            .filter(|c| c.pusher.is_some())
            .and_then(|c| c.layers.layer_source());
        let push_opts = PushOptions {
            // Base layers can be mounted from the repository they were
            // pulled from, new ones from the cache.
            mount_from: stage
                .layers
                .iter()
                .filter_map(|l| {
                    let from = l.source.clone().or_else(|| cache_repo.clone())?;
                    Some((l.desc.digest.clone(), from))
                })
                .collect(),
            ignore_immutable_tag_errors: opts.push_ignore_immutable_tag_errors,
        };
        let pushed = sctx
            .registry
            .push_all(&destinations, &image, &push_opts, store)?;
        for r in &destinations {
            log::info!("Pushed {}@{pushed}", r.repo_name());
        }
    }

    let name_lines = |with_tag: bool| -> String {
        destinations
            .iter()
            .map(|r| match (&r.tag, with_tag) {
                (Some(tag), true) => format!("{}:{tag}@{digest}\n", r.repo_name()),
                _ => format!("{}@{digest}\n", r.repo_name()),
            })
            .collect()
    };
    let name_files = [
        (&opts.image_name_with_digest_file, false),
        (&opts.image_name_tag_with_digest_file, true),
    ];
    for (file, with_tag) in name_files {
        if let Some(path) = file {
            std::fs::write(path, name_lines(with_tag)).map_err(|source| BuildError::Output {
                path: path.clone(),
                source,
            })?;
        }
    }
    if let Some(path) = &opts.digest_file {
        std::fs::write(path, digest.as_str()).map_err(|source| BuildError::Output {
            path: path.clone(),
            source,
        })?;
    }
    Ok(Outcome { digest })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(media_type: &str) -> Layer {
        Layer {
            desc: Descriptor {
                media_type: media_type.to_owned(),
                digest: Digest::of(media_type.as_bytes()),
                size: 1,
                urls: None,
                annotations: None,
                platform: None,
            },
            diff_id: Digest::of(b""),
            source: None,
        }
    }

    #[test]
    fn docker_media_types_unless_oci_is_asked_for_or_needed() {
        let gzip = [
            layer(manifest::DOCKER_LAYER_GZIP),
            layer(manifest::OCI_LAYER_GZIP),
        ];
        let docker = vec![manifest::DOCKER_LAYER_GZIP.to_owned(); 2];
        let oci = vec![manifest::OCI_LAYER_GZIP.to_owned(); 2];
        assert_eq!(layer_media_types(&gzip, false), (true, docker));
        assert_eq!(layer_media_types(&gzip, true), (false, oci));
        let mixed = [
            layer(manifest::DOCKER_LAYER_GZIP),
            layer(manifest::OCI_LAYER_ZSTD),
        ];
        let types = vec![
            manifest::OCI_LAYER_GZIP.to_owned(),
            manifest::OCI_LAYER_ZSTD.to_owned(),
        ];
        assert_eq!(layer_media_types(&mixed, false), (false, types));
    }
}
