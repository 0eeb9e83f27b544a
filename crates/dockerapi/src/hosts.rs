//! The `/etc/hosts` a joined container gets (as Weave's proxy writes it): its own name on its
//! weave address, so programs that look up their own hostname (Java's
//! `InetAddress.getLocalHost()`, as the Chronos framework does) find the overlay address,
//! then Docker's standard entries and the container's `--add-host` entries.

use std::fmt::Write;

use ipnet::Ipv4Net;
use serde_json::Value;

/// First line of a file weft wrote.
pub const MARKER: &str = "# written by weft: the container's weave address first";

/// The hosts file for an inspected container with weave addresses `addrs`.
pub fn hosts_file(inspect: &Value, addrs: &[Ipv4Net]) -> String {
    let hostname = inspect["Config"]["Hostname"].as_str().unwrap_or_default();
    let domain = inspect["Config"]["Domainname"].as_str().unwrap_or_default();
    let names = match (hostname, domain) {
        ("", _) => String::new(),
        (h, "") => h.to_owned(),
        (h, d) => format!("{h}.{} {h}", d.trim_end_matches('.')),
    };
    let mut out = format!("{MARKER}\n");
    if !names.is_empty() {
        for a in addrs {
            let _ = writeln!(out, "{}\t{names}", a.addr());
        }
    }
    out.push_str(
        "127.0.0.1\tlocalhost\n\
         ::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\n\
         ff00::0\tip6-mcastprefix\n\
         ff02::1\tip6-allnodes\n\
         ff02::2\tip6-allrouters\n",
    );
    // `--add-host name:ip` (Docker keeps them as "name:ip"; IPv6 addresses contain colons).
    for extra in inspect["HostConfig"]["ExtraHosts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        if let Some((name, ip)) = extra.split_once(':') {
            if !name.is_empty() && !ip.is_empty() && !name.contains(char::is_whitespace) {
                let _ = writeln!(out, "{ip}\t{name}");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn own_name_on_the_weave_address_first() {
        let inspect = json!({"Config": {"Hostname": "chronos1", "Domainname": "weave.local."},
                             "HostConfig": {"ExtraHosts": ["master:192.0.2.10", "v6:fe80::1", "bad"]}});
        let addrs: Vec<Ipv4Net> = vec!["10.32.1.2/24".parse().unwrap()];
        let text = hosts_file(&inspect, &addrs);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], MARKER);
        assert_eq!(lines[1], "10.32.1.2\tchronos1.weave.local chronos1");
        assert!(lines.contains(&"127.0.0.1\tlocalhost"));
        assert!(lines.contains(&"192.0.2.10\tmaster"));
        assert!(lines.contains(&"fe80::1\tv6"));
        assert!(!text.contains("bad"));
        let plain = json!({"Config": {"Hostname": "3f2a9c0d1e4b"}, "HostConfig": {}});
        let text = hosts_file(&plain, &addrs);
        assert!(text.contains("10.32.1.2\t3f2a9c0d1e4b\n"), "{text}");
        // No hostname, no own line; garbage gives the standard file.
        assert!(hosts_file(&json!("x"), &addrs).starts_with(&format!("{MARKER}\n127.0.0.1")));
    }
}
