//! Proxies from `HTTPS_PROXY`, `HTTP_PROXY` and `NO_PROXY` (upper case
//! first, then lower case), decided per URL with Go's rules, which kaniko
//! users rely on: https URLs use `HTTPS_PROXY` and http URLs `HTTP_PROXY`;
//! `localhost` and loopback addresses never use a proxy; `NO_PROXY` holds
//! `*`, IP addresses, CIDR ranges and domain names, each with an optional
//! `:port`, where `example.com` also covers its subdomains and
//! `.example.com` or `*.example.com` covers only the subdomains. ureq's own
//! environment handling picks one proxy for every scheme and knows neither
//! ports nor CIDRs in `NO_PROXY`, hence this.

use std::net::IpAddr;

/// The proxy settings of the environment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProxyConfig {
    /// Proxy for http URLs, and the variable it came from.
    http: Option<(&'static str, String)>,
    /// Proxy for https URLs, and the variable it came from.
    https: Option<(&'static str, String)>,
    no_proxy: Vec<NoProxy>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum NoProxy {
    All,
    Ip(IpAddr, Option<String>),
    Cidr(IpAddr, u8),
    /// `suffix` starts with '.'; `exact` also matches the name without it.
    Domain {
        suffix: String,
        exact: bool,
        port: Option<String>,
    },
}

/// `host:port` split, with IPv6 brackets removed; `None` without a port.
fn split_host_port(s: &str) -> Option<(&str, &str)> {
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        return Some((host, after.strip_prefix(':')?));
    }
    match s.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => Some((h, p)),
        _ => None,
    }
}

fn parse_cidr(s: &str) -> Option<NoProxy> {
    let (ip, bits) = s.split_once('/')?;
    let ip: IpAddr = ip.parse().ok()?;
    let bits: u8 = bits.parse().ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    (bits <= max).then_some(NoProxy::Cidr(ip, bits))
}

fn in_cidr(net: IpAddr, bits: u8, ip: IpAddr) -> bool {
    match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(i)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
            u32::from(n) & mask == u32::from(i) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(i)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
            u128::from(n) & mask == u128::from(i) & mask
        }
        _ => false,
    }
}

fn parse_no_proxy(list: &str) -> Vec<NoProxy> {
    let mut out = Vec::new();
    for entry in list.split(',') {
        let entry = entry.trim().to_ascii_lowercase();
        if entry.is_empty() {
            continue;
        }
        if entry == "*" {
            return vec![NoProxy::All];
        }
        if let Some(cidr) = parse_cidr(&entry) {
            out.push(cidr);
            continue;
        }
        let (host, port) = match split_host_port(&entry) {
            Some((h, p)) => (h.to_owned(), Some(p.to_owned())),
            None => (entry.trim_matches(['[', ']']).to_owned(), None),
        };
        if host.is_empty() {
            continue;
        }
        if let Ok(ip) = host.parse::<IpAddr>() {
            out.push(NoProxy::Ip(ip, port));
            continue;
        }
        let host = host.strip_prefix('*').unwrap_or(&host);
        let (suffix, exact) = match host.strip_prefix('.') {
            Some(_) => (host.to_owned(), false),
            None => (format!(".{host}"), true),
        };
        out.push(NoProxy::Domain {
            suffix,
            exact,
            port,
        });
    }
    out
}

/// Scheme, lowercased host (brackets removed) and port (explicit or the
/// scheme's default) of an absolute URL.
fn url_parts(url: &str) -> Option<(&str, String, String)> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit('@').next()?;
    let default = if scheme.eq_ignore_ascii_case("https") {
        "443"
    } else {
        "80"
    };
    let (host, port) = match split_host_port(authority) {
        Some((h, p)) => (h, p),
        None => (authority.trim_matches(['[', ']']), default),
    };
    Some((scheme, host.to_ascii_lowercase(), port.to_owned()))
}

impl ProxyConfig {
    /// The settings of this process's environment.
    pub fn from_env() -> ProxyConfig {
        ProxyConfig::from_lookup(|k| std::env::var(k).ok())
    }

    /// The settings that `get` (an environment lookup) describes.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> ProxyConfig {
        let first = |names: [&'static str; 2]| {
            names
                .into_iter()
                .find_map(|n| get(n).filter(|v| !v.trim().is_empty()).map(|v| (n, v)))
        };
        ProxyConfig {
            http: first(["HTTP_PROXY", "http_proxy"]),
            https: first(["HTTPS_PROXY", "https_proxy"]),
            no_proxy: first(["NO_PROXY", "no_proxy"])
                .map(|(_, v)| parse_no_proxy(&v))
                .unwrap_or_default(),
        }
    }

    /// The configured proxies with the variables they came from.
    pub(super) fn proxies(&self) -> impl Iterator<Item = (&'static str, &str)> {
        [&self.http, &self.https]
            .into_iter()
            .flatten()
            .map(|(var, url)| (*var, url.as_str()))
    }

    /// The proxy URL to reach `url` through, if any.
    pub fn proxy_for(&self, url: &str) -> Option<&str> {
        let (scheme, host, port) = url_parts(url)?;
        let proxy = if scheme.eq_ignore_ascii_case("https") {
            self.https.as_ref()
        } else {
            self.http.as_ref()
        }?;
        let ip = host.parse::<IpAddr>().ok();
        if host == "localhost" || ip.is_some_and(|ip| ip.is_loopback()) {
            return None;
        }
        let port_ok = |want: &Option<String>| want.as_ref().is_none_or(|p| *p == port);
        let bypass = self.no_proxy.iter().any(|rule| match rule {
            NoProxy::All => true,
            NoProxy::Ip(want, p) => ip == Some(*want) && port_ok(p),
            NoProxy::Cidr(net, bits) => ip.is_some_and(|ip| in_cidr(*net, *bits, ip)),
            NoProxy::Domain {
                suffix,
                exact,
                port: p,
            } => (host.ends_with(suffix.as_str()) || (*exact && host == suffix[1..])) && port_ok(p),
        });
        (!bypass).then_some(proxy.1.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(vars: &[(&str, &str)]) -> ProxyConfig {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        ProxyConfig::from_lookup(|k| {
            vars.iter()
                .find(|(name, _)| name == k)
                .map(|(_, v)| v.clone())
        })
    }

    #[test]
    fn the_scheme_picks_the_variable_and_upper_case_wins() {
        let c = config(&[
            ("HTTPS_PROXY", "http://secure:3128"),
            ("https_proxy", "http://lower:3128"),
            ("http_proxy", "http://plain:3128"),
        ]);
        assert_eq!(c.proxy_for("https://r.io/v2/"), Some("http://secure:3128"));
        assert_eq!(
            c.proxy_for("http://r.io:5000/v2/"),
            Some("http://plain:3128")
        );
        let c = config(&[("HTTPS_PROXY", " "), ("https_proxy", "http://lower:3128")]);
        assert_eq!(c.proxy_for("https://r.io/v2/"), Some("http://lower:3128"));
        assert_eq!(c.proxy_for("http://r.io/v2/"), None);
        assert_eq!(config(&[]).proxy_for("https://r.io/"), None);
        assert_eq!(
            c.proxies().collect::<Vec<_>>(),
            vec![("https_proxy", "http://lower:3128")]
        );
    }

    #[test]
    fn loopback_never_goes_through_a_proxy() {
        let c = config(&[("HTTPS_PROXY", "p:1"), ("HTTP_PROXY", "p:1")]);
        for url in [
            "http://localhost:5000/v2/",
            "https://127.0.0.1/v2/",
            "http://127.9.9.9:80/",
            "http://[::1]:5000/v2/",
        ] {
            assert_eq!(c.proxy_for(url), None, "{url}");
        }
        assert_eq!(c.proxy_for("http://10.1.2.3:5000/v2/"), Some("p:1"));
    }

    #[test]
    fn no_proxy_knows_domains_ports_ips_and_cidrs() {
        let c = config(&[
            ("HTTPS_PROXY", "http://p:3128"),
            ("HTTP_PROXY", "http://p:3128"),
            (
                "no_proxy",
                " Corp.example ,.internal,*.svc.local, reg.io:5000,10.0.0.0/8,192.168.1.7,[fd00::1]:443,172.16.0.9:8080",
            ),
        ]);
        let direct = [
            "https://corp.example/v2/",
            "https://a.b.corp.example/v2/",
            "https://x.internal/v2/",
            "https://x.svc.local/",
            "http://reg.io:5000/v2/",
            "https://10.200.3.4/v2/",
            "https://192.168.1.7:5000/v2/",
            "https://[fd00::1]/v2/",
            "http://172.16.0.9:8080/",
        ];
        for url in direct {
            assert_eq!(c.proxy_for(url), None, "{url}");
        }
        let proxied = [
            "https://notcorp.example/v2/",
            "https://internal/v2/",
            "https://svc.local/",
            "https://reg.io/v2/",
            "https://reg.io:5001/v2/",
            "https://11.0.0.1/v2/",
            "https://192.168.1.8/v2/",
            "http://[fd00::1]/v2/",
            "http://172.16.0.9/",
        ];
        for url in proxied {
            assert_eq!(c.proxy_for(url), Some("http://p:3128"), "{url}");
        }
        let all = config(&[("HTTPS_PROXY", "p:1"), ("NO_PROXY", "x.io,*")]);
        assert_eq!(all.proxy_for("https://anything.example/"), None);
    }

    #[test]
    fn urls_split_into_scheme_host_and_port() {
        assert_eq!(
            url_parts("https://R.io/v2/x?y"),
            Some(("https", "r.io".to_owned(), "443".to_owned()))
        );
        assert_eq!(
            url_parts("http://u:p@r.io:81"),
            Some(("http", "r.io".to_owned(), "81".to_owned()))
        );
        assert_eq!(
            url_parts("http://[::1]/"),
            Some(("http", "::1".to_owned(), "80".to_owned()))
        );
        assert_eq!(url_parts("r.io/v2"), None);
        assert!(in_cidr(
            "10.0.0.0".parse().unwrap(),
            0,
            "1.2.3.4".parse().unwrap()
        ));
        assert!(in_cidr(
            "fd00::".parse().unwrap(),
            8,
            "fdff::1".parse().unwrap()
        ));
        assert!(!in_cidr(
            "fd00::".parse().unwrap(),
            16,
            "fdff::1".parse().unwrap()
        ));
        assert_eq!(parse_cidr("10.0.0.0/33"), None);
    }
}
