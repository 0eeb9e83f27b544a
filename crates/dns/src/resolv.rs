//! The upstream servers of a resolv.conf text (the driver reads the file).

use std::net::{IpAddr, SocketAddr};

/// The `nameserver` addresses of a resolv.conf text, on port 53, without `exclude` (the
/// address weft's own DNS server listens on, which must never be its own upstream).
/// Lines that do not parse are skipped, as the C library does.
pub fn nameservers(text: &str, exclude: &[IpAddr]) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        // A scoped IPv6 address (fe80::1%eth0) has no port-53 meaning outside its link.
        let Some(addr) = words.next().and_then(|w| w.parse::<IpAddr>().ok()) else {
            continue;
        };
        if exclude.contains(&addr) {
            continue;
        }
        let sa = SocketAddr::new(addr, 53);
        if !out.contains(&sa) {
            out.push(sa);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_nameservers() {
        let text = "# comment\nsearch example.com\nnameserver 192.0.2.53\n\
                    nameserver   2001:db8::1 \nnameserver bogus\nnameserver 192.0.2.53\n\
                    nameserver 198.51.100.1\noptions ndots:2\n";
        let ex: IpAddr = "198.51.100.1".parse().unwrap();
        assert_eq!(
            nameservers(text, &[ex]),
            vec![
                "192.0.2.53:53".parse::<SocketAddr>().unwrap(),
                "[2001:db8::1]:53".parse().unwrap()
            ]
        );
        assert!(nameservers("", &[]).is_empty());
    }
}
