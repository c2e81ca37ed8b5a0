//! The image config: Docker-compatible JSON that keeps every field of the
//! base image's config, including ones kiln does not know, and serialises
//! canonically (sorted keys, no whitespace) so digests are stable.

use crate::digest::Digest;
use serde_json::{Map, Value, json};
use std::fmt;

/// Config failures.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("image config is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("image config is not a JSON object")]
    NotAnObject,
    #[error("image config field {field} has the wrong type: {detail}")]
    BadField { field: &'static str, detail: String },
}

/// An `os/arch[/variant]` platform.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    /// Parses `os/arch[/variant]`.
    pub fn parse(s: &str) -> Option<Platform> {
        let mut parts = s.split('/');
        let os = parts.next().filter(|p| !p.is_empty())?.to_owned();
        let architecture = parts.next().filter(|p| !p.is_empty())?.to_owned();
        let variant = parts.next().map(str::to_owned);
        parts.next().is_none().then_some(Platform {
            os,
            architecture,
            variant,
        })
    }

    /// The platform kiln builds for by default.
    pub fn linux_amd64() -> Platform {
        Platform {
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: None,
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// One change a Dockerfile instruction makes to the runtime config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigChange {
    Env(Vec<(String, String)>),
    Label(Vec<(String, String)>),
    User(String),
    Workdir(String),
    Entrypoint(Option<Vec<String>>),
    Cmd(Option<Vec<String>>),
    Expose(Vec<String>),
    Volume(Vec<String>),
    StopSignal(String),
    Shell(Vec<String>),
    Author(String),
    Healthcheck(Healthcheck),
    /// Appends an ONBUILD trigger.
    OnBuild(String),
}

/// A `HEALTHCHECK`; durations are nanoseconds, as Docker stores them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Healthcheck {
    pub test: Vec<String>,
    pub interval: Option<u64>,
    pub timeout: Option<u64>,
    pub start_period: Option<u64>,
    pub start_interval: Option<u64>,
    pub retries: Option<u32>,
}

/// A history entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct History {
    pub created: String,
    pub created_by: String,
    pub comment: Option<String>,
    pub empty_layer: bool,
}

/// An image config document.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageConfig {
    root: Map<String, Value>,
}

const DEFAULT_SHELL: [&str; 2] = ["/bin/sh", "-c"];

impl ImageConfig {
    /// The config of an empty (`FROM scratch`) image.
    pub fn scratch(platform: &Platform) -> ImageConfig {
        let mut root = Map::new();
        root.insert("architecture".into(), json!(platform.architecture));
        root.insert("os".into(), json!(platform.os));
        if let Some(v) = &platform.variant {
            root.insert("variant".into(), json!(v));
        }
        root.insert("config".into(), json!({}));
        root.insert("rootfs".into(), json!({"type": "layers", "diff_ids": []}));
        root.insert("history".into(), json!([]));
        ImageConfig { root }
    }

    /// Parses a base image's config, keeping unknown fields.
    pub fn parse(bytes: &[u8]) -> Result<ImageConfig, ConfigError> {
        let Value::Object(mut root) = serde_json::from_slice(bytes)? else {
            return Err(ConfigError::NotAnObject);
        };
        if !root.get("config").is_some_and(Value::is_object) {
            root.insert("config".into(), json!({}));
        }
        if !root.get("rootfs").is_some_and(Value::is_object) {
            root.insert("rootfs".into(), json!({"type": "layers", "diff_ids": []}));
        }
        let cfg = ImageConfig { root };
        cfg.diff_ids()?;
        Ok(cfg)
    }

    /// Canonical JSON: keys sorted, no insignificant whitespace.
    pub fn to_canonical_json(&self) -> Vec<u8> {
        let mut out = Vec::new();
        write_canonical(&Value::Object(self.root.clone()), &mut out);
        out
    }

    fn runtime(&self) -> Option<&Map<String, Value>> {
        self.root.get("config").and_then(Value::as_object)
    }

    fn runtime_mut(&mut self) -> &mut Map<String, Value> {
        let cfg = self.root.entry("config").or_insert_with(|| json!({}));
        if !cfg.is_object() {
            *cfg = json!({});
        }
        cfg.as_object_mut().expect("config was just made an object")
    }

    fn string_list(&self, key: &str) -> Option<Vec<String>> {
        let list = self.runtime()?.get(key)?.as_array()?;
        Some(
            list.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
        )
    }

    fn string(&self, key: &str) -> Option<String> {
        self.runtime()?
            .get(key)?
            .as_str()
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    }

    fn map_keys(&self, key: &str) -> Vec<String> {
        self.runtime()
            .and_then(|c| c.get(key))
            .and_then(Value::as_object)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// `Env` as ordered pairs.
    pub fn env(&self) -> Vec<(String, String)> {
        self.string_list("Env")
            .unwrap_or_default()
            .into_iter()
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) => (k.to_owned(), v.to_owned()),
                None => (kv, String::new()),
            })
            .collect()
    }

    /// `User`, if set.
    pub fn user(&self) -> Option<String> {
        self.string("User")
    }

    /// `WorkingDir`, if set.
    pub fn workdir(&self) -> Option<String> {
        self.string("WorkingDir")
    }

    /// `Entrypoint`, if set.
    pub fn entrypoint(&self) -> Option<Vec<String>> {
        self.string_list("Entrypoint")
    }

    /// `Cmd`, if set.
    pub fn cmd(&self) -> Option<Vec<String>> {
        self.string_list("Cmd")
    }

    /// `Shell`, or the default `/bin/sh -c`.
    pub fn shell(&self) -> Vec<String> {
        self.string_list("Shell")
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| DEFAULT_SHELL.iter().map(|s| s.to_string()).collect())
    }

    /// `Labels` as sorted pairs.
    pub fn labels(&self) -> Vec<(String, String)> {
        self.runtime()
            .and_then(|c| c.get("Labels"))
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Keys of `ExposedPorts`, sorted.
    pub fn exposed_ports(&self) -> Vec<String> {
        self.map_keys("ExposedPorts")
    }

    /// Keys of `Volumes`, sorted.
    pub fn volumes(&self) -> Vec<String> {
        self.map_keys("Volumes")
    }

    /// `OnBuild` triggers, in order.
    pub fn onbuild(&self) -> Vec<String> {
        self.string_list("OnBuild").unwrap_or_default()
    }

    /// Drops the `OnBuild` triggers: a child image runs them, and does not
    /// pass them on.
    pub fn clear_onbuild(&mut self) {
        self.runtime_mut().remove("OnBuild");
    }

    /// `StopSignal`, if set.
    pub fn stop_signal(&self) -> Option<String> {
        self.string("StopSignal")
    }

    /// The layers' uncompressed digests, bottom first.
    pub fn diff_ids(&self) -> Result<Vec<Digest>, ConfigError> {
        let ids = self.root.get("rootfs").and_then(|r| r.get("diff_ids"));
        let Some(ids) = ids else {
            return Ok(Vec::new());
        };
        let list = ids.as_array().ok_or(ConfigError::BadField {
            field: "rootfs.diff_ids",
            detail: "not a list".into(),
        })?;
        list.iter()
            .map(|v| {
                v.as_str()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| ConfigError::BadField {
                        field: "rootfs.diff_ids",
                        detail: format!("{v} is not a digest"),
                    })
            })
            .collect()
    }

    /// Applies one instruction's change.
    pub fn apply(&mut self, change: &ConfigChange) {
        let rt = self.runtime_mut();
        match change {
            ConfigChange::Env(pairs) => {
                let mut env: Vec<String> = rt
                    .get("Env")
                    .and_then(Value::as_array)
                    .map(|l| {
                        l.iter()
                            .filter_map(|v| v.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default();
                for (k, v) in pairs {
                    let entry = format!("{k}={v}");
                    match env.iter_mut().find(|e| e.split('=').next() == Some(k)) {
                        Some(slot) => *slot = entry,
                        None => env.push(entry),
                    }
                }
                rt.insert("Env".into(), json!(env));
            }
            ConfigChange::Label(pairs) => {
                let labels = object_entry(rt, "Labels");
                for (k, v) in pairs {
                    labels.insert(k.clone(), json!(v));
                }
            }
            ConfigChange::User(u) => {
                rt.insert("User".into(), json!(u));
            }
            ConfigChange::Workdir(w) => {
                rt.insert("WorkingDir".into(), json!(w));
            }
            ConfigChange::Entrypoint(e) => {
                rt.insert("Entrypoint".into(), json!(e));
            }
            ConfigChange::Cmd(c) => {
                rt.insert("Cmd".into(), json!(c));
            }
            ConfigChange::Expose(ports) => {
                let map = object_entry(rt, "ExposedPorts");
                for p in ports {
                    map.insert(p.clone(), json!({}));
                }
            }
            ConfigChange::Volume(vols) => {
                let map = object_entry(rt, "Volumes");
                for v in vols {
                    map.insert(v.clone(), json!({}));
                }
            }
            ConfigChange::StopSignal(s) => {
                rt.insert("StopSignal".into(), json!(s));
            }
            ConfigChange::Shell(s) => {
                rt.insert("Shell".into(), json!(s));
            }
            ConfigChange::Author(a) => {
                self.root.insert("author".into(), json!(a));
            }
            ConfigChange::Healthcheck(h) => {
                let mut hc = Map::new();
                hc.insert("Test".into(), json!(h.test));
                let fields = [
                    ("Interval", h.interval),
                    ("Timeout", h.timeout),
                    ("StartPeriod", h.start_period),
                    ("StartInterval", h.start_interval),
                ];
                for (key, value) in fields {
                    if let Some(v) = value {
                        hc.insert(key.into(), json!(v));
                    }
                }
                if let Some(r) = h.retries {
                    hc.insert("Retries".into(), json!(r));
                }
                rt.insert("Healthcheck".into(), Value::Object(hc));
            }
            ConfigChange::OnBuild(trigger) => {
                let list = rt.entry("OnBuild").or_insert_with(|| json!([]));
                if !list.is_array() {
                    *list = json!([]);
                }
                if let Value::Array(a) = list {
                    a.push(json!(trigger));
                }
            }
        }
    }

    /// Appends a layer and its history entry.
    pub fn add_layer(&mut self, diff_id: &Digest, history: History) {
        let rootfs = self
            .root
            .entry("rootfs")
            .or_insert_with(|| json!({"type": "layers"}));
        let ids = rootfs
            .as_object_mut()
            .expect("rootfs is an object after parse")
            .entry("diff_ids")
            .or_insert_with(|| json!([]));
        if let Value::Array(a) = ids {
            a.push(json!(diff_id.as_str()));
        }
        self.add_history(History {
            empty_layer: false,
            ..history
        });
    }

    /// Appends a history entry.
    pub fn add_history(&mut self, h: History) {
        let mut entry = Map::new();
        entry.insert("created".into(), json!(h.created));
        entry.insert("created_by".into(), json!(h.created_by));
        if let Some(c) = h.comment {
            entry.insert("comment".into(), json!(c));
        }
        if h.empty_layer {
            entry.insert("empty_layer".into(), json!(true));
        }
        let history = self.root.entry("history").or_insert_with(|| json!([]));
        if !history.is_array() {
            *history = json!([]);
        }
        if let Value::Array(a) = history {
            a.push(Value::Object(entry));
        }
    }

    /// The image's `created` time, as written.
    pub fn created(&self) -> Option<String> {
        self.root
            .get("created")
            .and_then(Value::as_str)
            .map(str::to_owned)
    }

    /// Sets the image's `created` time.
    pub fn set_created(&mut self, created: &str) {
        self.root.insert("created".into(), json!(created));
    }

    /// Replaces the platform fields.
    pub fn set_platform(&mut self, p: &Platform) {
        self.root.insert("os".into(), json!(p.os));
        self.root
            .insert("architecture".into(), json!(p.architecture));
        match &p.variant {
            Some(v) => self.root.insert("variant".into(), json!(v)),
            None => self.root.remove("variant"),
        };
    }
}

fn object_entry<'a>(rt: &'a mut Map<String, Value>, key: &str) -> &'a mut Map<String, Value> {
    let v = rt.entry(key).or_insert_with(|| json!({}));
    if !v.is_object() {
        *v = json!({});
    }
    v.as_object_mut().expect("just made an object")
}

/// Writes `v` as canonical JSON: object keys sorted by their bytes.
pub fn write_canonical(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(
                    serde_json::to_string(k)
                        .expect("strings serialise")
                        .as_bytes(),
                );
                out.push(b':');
                write_canonical(&m[k], out);
            }
            out.push(b'}');
        }
        Value::Array(a) => {
            out.push(b'[');
            for (i, item) in a.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        scalar => out.extend_from_slice(
            serde_json::to_string(scalar)
                .expect("scalars serialise")
                .as_bytes(),
        ),
    }
}

/// Formats seconds since the epoch as RFC 3339 UTC (`1970-01-01T00:00:00Z`).
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil-from-days: exact for the proleptic Gregorian calendar.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_survive_and_keys_are_sorted() {
        let cfg = ImageConfig::parse(br#"{"os":"linux","zzz":{"b":1,"a":2},"architecture":"amd64","config":{"Env":["A=1"]},"rootfs":{"type":"layers","diff_ids":[]}}"#).unwrap();
        let out = String::from_utf8(cfg.to_canonical_json()).unwrap();
        assert_eq!(
            out,
            r#"{"architecture":"amd64","config":{"Env":["A=1"]},"os":"linux","rootfs":{"diff_ids":[],"type":"layers"},"zzz":{"a":2,"b":1}}"#
        );
    }

    #[test]
    fn env_replaces_in_place_and_appends() {
        let mut cfg = ImageConfig::scratch(&Platform::linux_amd64());
        cfg.apply(&ConfigChange::Env(vec![
            ("PATH".into(), "/bin".into()),
            ("A".into(), "1".into()),
        ]));
        cfg.apply(&ConfigChange::Env(vec![
            ("PATH".into(), "/usr/bin:/bin".into()),
            ("B".into(), "x=y".into()),
        ]));
        assert_eq!(
            cfg.env(),
            vec![
                ("PATH".into(), "/usr/bin:/bin".into()),
                ("A".into(), "1".into()),
                ("B".into(), "x=y".into())
            ]
        );
    }

    #[test]
    fn layers_and_history_are_recorded() {
        let mut cfg = ImageConfig::scratch(&Platform::linux_amd64());
        let d = Digest::of(b"layer");
        cfg.add_history(History {
            created: rfc3339(0),
            created_by: "ENV A=1".into(),
            comment: None,
            empty_layer: true,
        });
        cfg.add_layer(
            &d,
            History {
                created: rfc3339(0),
                created_by: "RUN x".into(),
                comment: None,
                empty_layer: true,
            },
        );
        assert_eq!(cfg.diff_ids().unwrap(), vec![d]);
        let v: Value = serde_json::from_slice(&cfg.to_canonical_json()).unwrap();
        assert_eq!(v["history"][0]["empty_layer"], json!(true));
        assert_eq!(v["history"][1].get("empty_layer"), None);
        assert_eq!(v["history"][1]["created"], json!("1970-01-01T00:00:00Z"));
    }

    #[test]
    fn labels_ports_volumes_and_shell() {
        let mut cfg = ImageConfig::scratch(&Platform::linux_amd64());
        assert_eq!(cfg.shell(), vec!["/bin/sh", "-c"]);
        cfg.apply(&ConfigChange::Label(vec![
            ("b".into(), "2".into()),
            ("a".into(), "1".into()),
        ]));
        cfg.apply(&ConfigChange::Expose(vec!["80/tcp".into()]));
        cfg.apply(&ConfigChange::Volume(vec!["/data".into()]));
        cfg.apply(&ConfigChange::Shell(vec!["/bin/bash".into(), "-c".into()]));
        assert_eq!(
            cfg.labels(),
            vec![("a".into(), "1".into()), ("b".into(), "2".into())]
        );
        assert_eq!(cfg.exposed_ports(), vec!["80/tcp"]);
        assert_eq!(cfg.volumes(), vec!["/data"]);
        assert_eq!(cfg.shell(), vec!["/bin/bash", "-c"]);
    }

    #[test]
    fn healthcheck_and_onbuild_use_dockers_fields() {
        let mut cfg = ImageConfig::scratch(&Platform::linux_amd64());
        cfg.apply(&ConfigChange::Healthcheck(Healthcheck {
            test: vec!["CMD-SHELL".into(), "true".into()],
            interval: Some(30_000_000_000),
            retries: Some(3),
            ..Healthcheck::default()
        }));
        cfg.apply(&ConfigChange::OnBuild("RUN a".into()));
        cfg.apply(&ConfigChange::OnBuild("RUN b".into()));
        let v: Value = serde_json::from_slice(&cfg.to_canonical_json()).unwrap();
        assert_eq!(
            v["config"]["Healthcheck"],
            json!({"Test": ["CMD-SHELL", "true"], "Interval": 30_000_000_000u64, "Retries": 3})
        );
        assert_eq!(cfg.onbuild(), vec!["RUN a", "RUN b"]);
        cfg.clear_onbuild();
        assert!(cfg.onbuild().is_empty());
    }

    #[test]
    fn rfc3339_known_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_764_400_000), "2025-11-29T07:06:40Z");
    }

    #[test]
    fn platform_parse() {
        assert_eq!(
            Platform::parse("linux/arm64/v8").unwrap().to_string(),
            "linux/arm64/v8"
        );
        assert!(Platform::parse("linux").is_none());
        assert!(Platform::parse("a/b/c/d").is_none());
    }
}
