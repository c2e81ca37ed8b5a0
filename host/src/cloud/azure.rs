//! Azure Blob Storage: which URLs are blobs, and Shared Key signing with
//! `AZURE_STORAGE_ACCESS_KEY` (a URL that carries a SAS token needs none).

use super::{CloudError, hmac_sha256};
use base64::Engine as _;

/// Host suffixes of the public and sovereign Azure clouds' blob endpoints.
pub const BLOB_SUFFIXES: [&str; 4] = [
    ".blob.core.windows.net",
    ".blob.core.chinacloudapi.cn",
    ".blob.core.usgovcloudapi.net",
    ".blob.core.cloudapi.de",
];

/// The REST API version kiln speaks.
pub const API_VERSION: &str = "2021-08-06";

/// A blob named by a URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blob {
    /// The storage account.
    pub account: String,
    /// The URL to GET, SAS query included.
    pub url: String,
    /// The URL's path (`/container/blob`, or `/account/container/blob` on
    /// an emulator), as Shared Key signs it.
    pub path: String,
    /// True when the URL carries a SAS token (`sig=`): no key is needed.
    pub sas: bool,
}

/// The blob `url` names: `https://<account>.blob.core.<cloud>/<container>/<blob>`,
/// or, under `endpoint` (an emulator such as Azurite,
/// `http://127.0.0.1:10000/<account>`), `<endpoint>/<container>/<blob>`.
/// `None` if `url` is neither.
pub fn blob(url: &str, endpoint: Option<&str>) -> Option<Blob> {
    let (without_query, query) = url.split_once('?').unwrap_or((url, ""));
    let sas = query.split('&').any(|p| p.starts_with("sig="));
    if let Some(ep) = endpoint.map(|e| e.trim_end_matches('/'))
        && let Some(rest) = without_query.strip_prefix(ep)
        && rest.starts_with('/')
    {
        let account = ep.rsplit('/').next()?.to_owned();
        let path_start = ep.split("://").nth(1)?.find('/')?;
        let path = format!("{}{rest}", &ep.split("://").nth(1)?[path_start..]);
        return valid_blob_path(rest).then(|| Blob {
            account,
            url: url.to_owned(),
            path,
            sas,
        });
    }
    let rest = without_query.strip_prefix("https://")?;
    let (host, path) = rest.split_once('/')?;
    let account = BLOB_SUFFIXES
        .iter()
        .find_map(|s| host.strip_suffix(s))
        .filter(|a| !a.is_empty() && !a.contains('.'))?;
    let path = format!("/{path}");
    valid_blob_path(&path).then(|| Blob {
        account: account.to_owned(),
        url: url.to_owned(),
        path,
        sas,
    })
}

/// `/container/blob...` with both parts non-empty.
fn valid_blob_path(path: &str) -> bool {
    path.trim_start_matches('/')
        .split_once('/')
        .is_some_and(|(c, b)| !c.is_empty() && !b.is_empty())
}

/// The Shared Key `Authorization` header of a GET of `blob` with the given
/// `x-ms-` headers (which must include `x-ms-date` and `x-ms-version`) and
/// `query` parameters; `key` is the account key as base64.
pub fn shared_key(
    blob: &Blob,
    ms_headers: &[(&str, &str)],
    query: &[(&str, &str)],
    key: &str,
) -> Result<String, CloudError> {
    let key = base64::engine::general_purpose::STANDARD
        .decode(key.trim())
        .map_err(CloudError::AzureKey)?;
    let to_sign = string_to_sign("GET", &blob.account, &blob.path, ms_headers, query);
    let mac = hmac_sha256(&key, to_sign.as_bytes());
    Ok(format!(
        "SharedKey {}:{}",
        blob.account,
        base64::engine::general_purpose::STANDARD.encode(mac)
    ))
}

/// The Shared Key string-to-sign for a request without body or
/// conditional headers.
fn string_to_sign(
    verb: &str,
    account: &str,
    path: &str,
    ms_headers: &[(&str, &str)],
    query: &[(&str, &str)],
) -> String {
    let mut headers: Vec<(String, &str)> = ms_headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.trim()))
        .collect();
    headers.sort();
    let headers: String = headers.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
    let mut params: Vec<(String, &str)> = query
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), *v))
        .collect();
    params.sort();
    let params: String = params.iter().map(|(k, v)| format!("\n{k}:{v}")).collect();
    // Eleven standard headers (Content-Encoding … Range), all empty here.
    format!(
        "{verb}\n{}{headers}/{account}{path}{params}",
        "\n".repeat(11)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_urls_of_every_cloud_and_of_an_emulator() {
        let b = blob("https://acct.blob.core.windows.net/ctx/dir/c.tar.gz", None).unwrap();
        assert_eq!(
            (b.account.as_str(), b.path.as_str(), b.sas),
            ("acct", "/ctx/dir/c.tar.gz", false)
        );
        let cn = blob(
            "https://a2.blob.core.chinacloudapi.cn/c/b?sv=1&sig=abc",
            None,
        )
        .unwrap();
        assert_eq!((cn.account.as_str(), cn.sas), ("a2", true));
        assert!(blob("https://example.com/c/b", None).is_none());
        assert!(blob("https://acct.blob.core.windows.net/container-only", None).is_none());
        assert!(blob("https://x.y.blob.core.windows.net/c/b", None).is_none());
        let azurite = blob(
            "http://127.0.0.1:10000/devstoreaccount1/ctx/c.tar.gz",
            Some("http://127.0.0.1:10000/devstoreaccount1"),
        )
        .unwrap();
        assert_eq!(azurite.account, "devstoreaccount1");
        assert_eq!(azurite.path, "/devstoreaccount1/ctx/c.tar.gz");
    }

    #[test]
    fn the_string_to_sign_has_docs_layout() {
        let s = string_to_sign(
            "GET",
            "acct",
            "/ctx/c.tar.gz",
            &[
                ("x-ms-version", API_VERSION),
                ("x-ms-date", "Fri, 26 Jun 2015 23:39:12 GMT"),
            ],
            &[("Timeout", "20")],
        );
        assert_eq!(
            s,
            "GET\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:Fri, 26 Jun 2015 23:39:12 GMT\nx-ms-version:2021-08-06\n/acct/ctx/c.tar.gz\ntimeout:20"
        );
    }

    #[test]
    fn shared_key_signs_with_the_decoded_key_and_rejects_bad_keys() {
        let b = blob("https://acct.blob.core.windows.net/c/b", None).unwrap();
        let headers = [
            ("x-ms-date", "Mon, 01 Jan 2024 00:00:00 GMT"),
            ("x-ms-version", API_VERSION),
        ];
        let key = base64::engine::general_purpose::STANDARD.encode(b"secret-key");
        let auth = shared_key(&b, &headers, &[], &key).unwrap();
        let expected = hmac_sha256(
            b"secret-key",
            string_to_sign("GET", "acct", "/c/b", &headers, &[]).as_bytes(),
        );
        assert_eq!(
            auth,
            format!(
                "SharedKey acct:{}",
                base64::engine::general_purpose::STANDARD.encode(expected)
            )
        );
        let err = shared_key(&b, &headers, &[], "not base64!").unwrap_err();
        assert!(
            err.to_string().contains("AZURE_STORAGE_ACCESS_KEY"),
            "{err}"
        );
        assert!(!err.to_string().contains("not base64!"));
    }
}
