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
    if !ip.is_empty() {
        let bare = ip
            .strip_prefix('[')
            .and_then(|ip| ip.strip_suffix(']'))
            .unwrap_or(ip);
        bare.parse::<IpAddr>()
            .map_err(|_| format!("invalid port: \"{raw}\": invalid IP address: {ip}"))?;
    }
    let (start, end) =
        port_range(port).map_err(|e| format!("invalid containerPort: {port} ({e})"))?;
    if !host_port.is_empty() {
        let (host_start, host_end) =
            port_range(host_port).map_err(|e| format!("invalid hostPort: {host_port} ({e})"))?;
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

fn port_range(ports: &str) -> Result<(u32, u32), String> {
    if ports.is_empty() {
        return Err("empty string specified for ports".to_owned());
    }
    let Some((start, end)) = ports.split_once('-') else {
        let port = port_number(ports)?;
        return Ok((port, port));
    };
    let start_port =
        port_number(start).map_err(|e| format!("invalid start port '{start}': {e}"))?;
    if start == end {
        return Ok((start_port, start_port));
    }
    let end_port = port_number(end).map_err(|e| format!("invalid end port '{end}': {e}"))?;
    if end_port < start_port {
        return Err(format!("invalid port range: {ports}"));
    }
    Ok((start_port, end_port))
}

fn port_number(raw: &str) -> Result<u32, String> {
    if raw.is_empty() {
        return Err("value is empty".to_owned());
    }
    let port: i64 = raw.parse().map_err(|_| "invalid syntax".to_owned())?;
    u32::try_from(port)
        .ok()
        .filter(|p| *p <= 65535)
        .ok_or_else(|| "value out of range (0–65535)".to_owned())
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
        assert!(
            ports(&["1.2.3:80:80"])
                .unwrap_err()
                .contains("invalid IP address")
        );
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
        assert!(ports(&["65536"]).unwrap_err().contains("out of range"));
        assert!(
            ports(&["abc"])
                .unwrap_err()
                .contains("invalid containerPort: abc")
        );
        assert!(
            ports(&["90-80"])
                .unwrap_err()
                .contains("invalid port range")
        );
    }
}
