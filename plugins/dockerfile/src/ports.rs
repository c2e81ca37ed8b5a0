//! EXPOSE port specs: `[ip:][host:]port[-end][/proto]` to `port/proto`.

use std::net::IpAddr;

/// Normalises port specs to `port/proto` (proto lower-case, `tcp` by
/// default), one entry per port of a range, as BuildKit does.
pub fn normalize(specs: &[String]) -> Result<Vec<String>, String> {
    let mut ports = Vec::new();
    for spec in specs {
        ports.extend(normalize_one(spec)?);
    }
    Ok(ports)
}

fn normalize_one(raw: &str) -> Result<Vec<String>, String> {
    let (ip, host_port, container_port) = split_parts(raw);
    let (port, proto) = container_port
        .split_once('/')
        .unwrap_or((container_port, ""));
    if port.is_empty() {
        return Err(format!("invalid port: \"{raw}\": no port specified"));
    }
    let proto = match proto.to_ascii_lowercase().as_str() {
        "" => "tcp".to_owned(),
        p @ ("tcp" | "udp" | "sctp") => p.to_owned(),
        _ => return Err(format!("invalid port: \"{raw}\": invalid proto: {proto}")),
    };
    let ip = match ip.strip_prefix('[') {
        Some(bracketed) => bracketed
            .strip_suffix(']')
            .ok_or_else(|| format!("invalid IP address {ip}"))?,
        None => ip,
    };
    if !ip.is_empty() && ip.parse::<IpAddr>().is_err() {
        return Err(format!("invalid IP address: {ip}"));
    }
    let (start, end) = port_range(port).ok_or_else(|| format!("invalid containerPort: {port}"))?;
    if !host_port.is_empty() {
        let (host_start, host_end) =
            port_range(host_port).ok_or_else(|| format!("invalid hostPort: {host_port}"))?;
        // A host range for a single container port is a pool to allocate
        // from; otherwise the two ranges must be the same size.
        if end - start != host_end - host_start && end != start {
            return Err(format!(
                "invalid ranges specified for container and host Ports: {port} and {host_port}"
            ));
        }
    }
    Ok((start..=end).map(|p| format!("{p}/{proto}")).collect())
}

/// Splits `[ip:][host:]container`, where the IP may itself contain colons.
fn split_parts(raw: &str) -> (&str, &str, &str) {
    let mut parts = raw.rsplitn(3, ':');
    let container = parts.next().unwrap_or_default();
    let host = parts.next().unwrap_or_default();
    let ip = parts.next().unwrap_or_default();
    (ip, host, container)
}

/// `start[-end]`; BuildKit reports why a range is bad only as "invalid".
fn port_range(ports: &str) -> Option<(u32, u32)> {
    let Some((start, end)) = ports.split_once('-') else {
        let port = port_number(ports)?;
        return Some((port, port));
    };
    let start_port = port_number(start)?;
    if start == end {
        return Some((start_port, start_port));
    }
    let end_port = port_number(end)?;
    (end_port >= start_port).then_some((start_port, end_port))
}

/// Go's `strconv.ParseInt` of a port, within 0–65535.
fn port_number(raw: &str) -> Option<u32> {
    let port: i64 = raw.parse().ok()?;
    u32::try_from(port).ok().filter(|p| *p <= 65535)
}

#[cfg(test)]
mod tests {
    use super::normalize;

    fn ports(specs: &[&str]) -> Result<Vec<String>, String> {
        normalize(&specs.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn default_protocol_is_tcp_and_protocols_are_lower_case() {
        assert_eq!(
            ports(&["80", "53/UDP", "9/sctp"]).unwrap(),
            ["80/tcp", "53/udp", "9/sctp"]
        );
    }

    #[test]
    fn ranges_expand_to_each_port() {
        assert_eq!(
            ports(&["8000-8002/udp"]).unwrap(),
            ["8000/udp", "8001/udp", "8002/udp"]
        );
        assert_eq!(ports(&["7-7"]).unwrap(), ["7/tcp"]);
    }

    #[test]
    fn host_parts_are_validated_then_dropped() {
        assert_eq!(ports(&["127.0.0.1:8080:80"]).unwrap(), ["80/tcp"]);
        assert_eq!(ports(&["[::1]:8080:80/udp"]).unwrap(), ["80/udp"]);
        assert_eq!(ports(&["8080-8090:80"]).unwrap(), ["80/tcp"]);
        assert_eq!(
            ports(&["1.2.3:80:80"]).unwrap_err(),
            "invalid IP address: 1.2.3"
        );
        assert_eq!(
            ports(&["[::1:80:80"]).unwrap_err(),
            "invalid IP address [::1"
        );
        assert_eq!(ports(&["::1:8080:80"]).unwrap(), ["80/tcp"]);
        assert!(
            ports(&["8080-8081:80-82"])
                .unwrap_err()
                .contains("invalid ranges")
        );
    }

    #[test]
    fn bad_specs_fail_with_the_reason() {
        assert!(
            ports(&["80/http"])
                .unwrap_err()
                .contains("invalid proto: http")
        );
        assert!(ports(&["/tcp"]).unwrap_err().contains("no port specified"));
        assert_eq!(
            ports(&["65536"]).unwrap_err(),
            "invalid containerPort: 65536"
        );
        assert_eq!(ports(&["-1"]).unwrap_err(), "invalid containerPort: -1");
        assert_eq!(
            ports(&["8000-"]).unwrap_err(),
            "invalid containerPort: 8000-"
        );
        assert_eq!(ports(&["x:80"]).unwrap_err(), "invalid hostPort: x");
        assert!(
            ports(&["abc"])
                .unwrap_err()
                .contains("invalid containerPort: abc")
        );
        assert_eq!(
            ports(&["90-80"]).unwrap_err(),
            "invalid containerPort: 90-80"
        );
        assert_eq!(
            ports(&["80/HTTP"]).unwrap_err(),
            "invalid port: \"80/HTTP\": invalid proto: HTTP"
        );
    }
}
