//! Azurite's blob service (npm `azurite`), which verifies Shared Key
//! signatures and SAS tokens like Azure does. The setup requests here are
//! signed with the emulator account's key.

use super::{Daemon, curl, curl_status, tool};
use anyhow::{Context, Result};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use std::ffi::OsString;
use std::path::Path;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

/// The emulator's storage account.
pub const AZURITE_ACCOUNT: &str = "devstoreaccount1";
/// The emulator account's well-known key (public: it is in Azurite's docs).
pub const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
/// The API version of the setup requests and SAS tokens.
const VERSION: &str = "2021-08-06";

/// An Azurite blob server; stopped on drop.
pub struct Azurite {
    daemon: Daemon,
}

impl Azurite {
    /// Starts Azurite's blob service on a free port of 127.0.0.1, storing
    /// in a scratch directory.
    pub fn start() -> Result<Azurite> {
        let program = tool("azurite/node_modules/.bin/azurite-blob")?;
        // Azurite refuses every unsigned request: any answer means ready.
        let daemon = Daemon::start(
            "azurite",
            &format!("/{AZURITE_ACCOUNT}?comp=list"),
            true,
            |port, scratch| {
                let mut cmd = Command::new(&program);
                cmd.args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
                    .arg("--location")
                    .arg(scratch.join("data"))
                    .args(["--skipApiVersionCheck", "--disableTelemetry", "--silent"]);
                Ok(cmd)
            },
        );
        Ok(Azurite { daemon: daemon? })
    }

    /// `AZURE_STORAGE_BLOB_ENDPOINT`: `http://127.0.0.1:PORT/devstoreaccount1`.
    pub fn endpoint(&self) -> String {
        format!("{}/{AZURITE_ACCOUNT}", self.daemon.url())
    }

    /// The URL of `container/blob`.
    pub fn blob_url(&self, container: &str, blob: &str) -> String {
        format!("{}/{container}/{blob}", self.endpoint())
    }

    /// Creates `container` (private: reading it needs a key or a SAS).
    pub fn create_container(&self, container: &str) -> Result<()> {
        let url = format!("{}/{container}?restype=container", self.endpoint());
        let headers = self.signed_headers(
            "PUT",
            &format!("/{container}"),
            0,
            "",
            &[],
            &[("restype", "container")],
        );
        curl(header_args(&headers).chain(["-X".into(), "PUT".into(), url.into()]))
            .with_context(|| format!("cannot create the Azurite container {container}"))?;
        Ok(())
    }

    /// Uploads the file `source` as the block blob `container/blob`.
    pub fn put_blob(&self, container: &str, blob: &str, source: &Path) -> Result<()> {
        let length = std::fs::metadata(source)
            .with_context(|| format!("cannot read {}", source.display()))?
            .len();
        let content_type = "application/octet-stream";
        let headers = self.signed_headers(
            "PUT",
            &format!("/{container}/{blob}"),
            length,
            content_type,
            &[("x-ms-blob-type", "BlockBlob")],
            &[],
        );
        let mut data = OsString::from("@");
        data.push(source);
        let args = header_args(&headers).chain([
            "-H".into(),
            format!("Content-Type: {content_type}").into(),
            "-X".into(),
            "PUT".into(),
            "--data-binary".into(),
            data,
            self.blob_url(container, blob).into(),
        ]);
        curl(args).with_context(|| {
            format!(
                "cannot upload {} to Azurite as {container}/{blob}",
                source.display()
            )
        })?;
        Ok(())
    }

    /// A GET of `url` signed with Shared Key and `key` (base64): the status
    /// and the body.
    pub fn signed_get(&self, container: &str, blob: &str, key: &str) -> Result<(u16, Vec<u8>)> {
        let date = http_date(SystemTime::now());
        let mut ms = vec![("x-ms-date", date.as_str()), ("x-ms-version", VERSION)];
        ms.sort();
        let resource = format!("/{AZURITE_ACCOUNT}/{AZURITE_ACCOUNT}/{container}/{blob}");
        let auth = shared_key(key, "GET", 0, "", &ms, &resource, &[])?;
        let mut headers: Vec<String> = ms.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        headers.push(format!("Authorization: SharedKey {AZURITE_ACCOUNT}:{auth}"));
        curl_status(header_args(&headers).chain([self.blob_url(container, blob).into()]))
    }

    /// The blob URL with a service SAS that allows reading `container/blob`
    /// until 2099, signed with the account key.
    pub fn sas_url(&self, container: &str, blob: &str) -> Result<String> {
        let query = blob_sas_query(
            AZURITE_KEY,
            &format!("/blob/{AZURITE_ACCOUNT}/{container}/{blob}"),
        )?;
        Ok(format!("{}?{query}", self.blob_url(container, blob)))
    }

    /// The headers of a request signed with the account key: `x-ms-date`,
    /// `x-ms-version`, the `extra` `x-ms-` headers and `Authorization`.
    fn signed_headers(
        &self,
        verb: &str,
        path: &str,
        length: u64,
        content_type: &str,
        extra: &[(&str, &str)],
        query: &[(&str, &str)],
    ) -> Vec<String> {
        let date = http_date(SystemTime::now());
        let mut ms: Vec<(&str, &str)> = vec![("x-ms-date", &date), ("x-ms-version", VERSION)];
        ms.extend_from_slice(extra);
        ms.sort();
        let resource = format!("/{AZURITE_ACCOUNT}/{AZURITE_ACCOUNT}{path}");
        let signature = shared_key(
            AZURITE_KEY,
            verb,
            length,
            content_type,
            &ms,
            &resource,
            query,
        )
        .unwrap_or_default();
        let mut headers: Vec<String> = ms.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        headers.push(format!(
            "Authorization: SharedKey {AZURITE_ACCOUNT}:{signature}"
        ));
        headers
    }
}

/// `-H` arguments for curl.
fn header_args(headers: &[String]) -> impl Iterator<Item = OsString> + '_ {
    headers
        .iter()
        .flat_map(|h| [OsString::from("-H"), OsString::from(h)])
}

/// The Shared Key signature (base64) of a request: `ms_headers` sorted by
/// name, `resource` = `/<account><url path>`, `query` its parameters.
fn shared_key(
    key: &str,
    verb: &str,
    length: u64,
    content_type: &str,
    ms_headers: &[(&str, &str)],
    resource: &str,
    query: &[(&str, &str)],
) -> Result<String> {
    let length = if length == 0 {
        String::new()
    } else {
        length.to_string()
    };
    // Content-Encoding, -Language, -Length, -MD5, -Type, Date,
    // If-Modified-Since, If-Match, If-None-Match, If-Unmodified-Since, Range.
    let mut to_sign = format!("{verb}\n\n\n{length}\n\n{content_type}\n\n\n\n\n\n\n");
    for (name, value) in ms_headers {
        to_sign.push_str(&format!("{name}:{value}\n"));
    }
    to_sign.push_str(resource);
    let mut query = query.to_vec();
    query.sort();
    for (name, value) in query {
        to_sign.push_str(&format!("\n{name}:{value}"));
    }
    sign(key, &to_sign)
}

/// The query of a read-only service SAS for the blob `resource`
/// (`/blob/<account>/<container>/<blob>`), valid from 2000 to 2099.
fn blob_sas_query(key: &str, resource: &str) -> Result<String> {
    let (permissions, start, expiry) = ("r", "2000-01-01T00:00:00Z", "2099-01-01T00:00:00Z");
    // sp, st, se, resource, si, sip, spr, sv, sr, snapshot time,
    // encryption scope, rscc, rscd, rsce, rscl, rsct.
    let to_sign = format!(
        "{permissions}\n{start}\n{expiry}\n{resource}\n\n\nhttp\n{VERSION}\nb\n\n\n\n\n\n\n"
    );
    let signature = sign(key, &to_sign)?;
    Ok(format!(
        "sv={VERSION}&st={}&se={}&sr=b&sp={permissions}&spr=http&sig={}",
        percent(start),
        percent(expiry),
        percent(&signature)
    ))
}

/// HMAC-SHA256 of `text` with the base64 `key`, as base64.
fn sign(key: &str, text: &str) -> Result<String> {
    let key = STANDARD
        .decode(key)
        .context("the Azure account key is not base64")?;
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key);
    Ok(STANDARD.encode(ring::hmac::sign(&key, text.as_bytes()).as_ref()))
}

/// `text` with everything but unreserved characters percent-encoded.
fn percent(text: &str) -> String {
    let mut out = String::new();
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// `time` as an RFC 1123 date (`Sun, 06 Nov 1994 08:49:37 GMT`).
fn http_date(time: SystemTime) -> String {
    let secs = time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let weekday = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][(days % 7) as usize];
    let (year, month, day) = civil_from_days(days);
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ][(month - 1) as usize];
    format!(
        "{weekday}, {day:02} {month} {year} {:02}:{:02}:{:02} GMT",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

/// The (year, month, day) of `days` since 1970-01-01 (Howard Hinnant's
/// algorithm).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn http_dates_are_rfc_1123() {
        assert_eq!(http_date(UNIX_EPOCH), "Thu, 01 Jan 1970 00:00:00 GMT");
        let t = UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(http_date(t), "Sun, 06 Nov 1994 08:49:37 GMT");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(http_date(leap), "Tue, 29 Feb 2000 00:00:00 GMT");
    }
}
