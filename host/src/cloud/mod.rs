//! Credentials and request signing for the cloud storage that build
//! contexts come from. The host signs each request a context plugin sends,
//! so no secret ever enters a plugin's memory; the signing here is pure
//! (time and credentials are arguments) and checked against the providers'
//! published examples.

pub mod aws;
pub mod azure;
pub mod gcs;

/// Cloud credential and signing failures.
#[derive(Debug, thiserror::Error)]
pub enum CloudError {
    #[error("cannot read AWS credentials file {path}: {source}")]
    AwsFile {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(
        "no AWS credentials for {url}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or add a [{profile}] section to {file}"
    )]
    NoAwsCredentials {
        url: String,
        profile: String,
        file: String,
    },
    #[error("invalid {what} in {url}: {reason}")]
    Url {
        what: &'static str,
        url: String,
        reason: String,
    },
    #[error(
        "AZURE_STORAGE_ACCESS_KEY is not valid base64: {0}; copy the key from the storage account's Access keys"
    )]
    AzureKey(base64::DecodeError),
}

/// Percent-encodes everything but RFC 3986's unreserved characters, and
/// `/` too unless `keep_slash`.
pub fn uri_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            b'/' if keep_slash => out.push('/'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Undoes percent-encoding; a `%` not followed by two hex digits stays as
/// it is, and bytes that are not UTF-8 become U+FFFD.
pub fn uri_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| char::from(c).to_digit(16);
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Seconds since the epoch as an HTTP date (`Sun, 06 Nov 1994 08:49:37 GMT`).
pub fn http_date(secs: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    // `YYYY-MM-DDTHH:MM:SSZ`, reordered.
    let iso = crate::image::config::rfc3339(secs);
    let month: usize = iso[5..7].parse().unwrap_or(1);
    format!(
        "{}, {} {} {} {} GMT",
        DAYS[(secs / 86_400 % 7) as usize],
        &iso[8..10],
        MONTHS[month - 1],
        &iso[..4],
        &iso[11..19]
    )
}

/// HMAC-SHA256 of `data` under `key`.
fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    let tag = ring::hmac::sign(&key, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(tag.as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_encoding_keeps_unreserved_and_optionally_slashes() {
        assert_eq!(uri_encode("a b/c~d_e.f-g", true), "a%20b/c~d_e.f-g");
        assert_eq!(uri_encode("a/b+c=d", false), "a%2Fb%2Bc%3Dd");
        assert_eq!(uri_encode("\u{e4}", true), "%C3%A4");
    }

    #[test]
    fn uri_decoding_undoes_encoding_and_keeps_stray_percents() {
        assert_eq!(uri_decode(&uri_encode("a b/c%d+é", true)), "a b/c%d+é");
        assert_eq!(uri_decode("p%40ss%2"), "p@ss%2");
        assert_eq!(uri_decode("%+1%zz"), "%+1%zz");
    }

    #[test]
    fn http_dates_match_rfc_9110s_example() {
        assert_eq!(http_date(784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
    }

    #[test]
    fn hmac_matches_rfc_4231_case_2() {
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
