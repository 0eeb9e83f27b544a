//! Weave's address arguments, as `weave attach` and `WEAVE_CIDR` take them: `net:default`,
//! `net:CIDR` (allocate in that subnet), `ip:CIDR` or a bare `CIDR` (claim that address).

use std::net::Ipv4Addr;
use std::str::FromStr;

use ipnet::Ipv4Net;

/// One address argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddrSpec {
    /// Allocate in the default subnet.
    DefaultSubnet,
    /// Allocate in this subnet.
    Subnet(Ipv4Net),
    /// Claim this address (with its prefix length).
    Address(Ipv4Net),
}

/// Why an address argument is not valid; the message names the argument and says what to
/// write instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SpecError(String);

impl FromStr for AddrSpec {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, SpecError> {
        if s == "net:default" {
            return Ok(Self::DefaultSubnet);
        }
        let (is_net, cidr) = match s.strip_prefix("net:") {
            Some(rest) => (true, rest),
            None => (false, s.strip_prefix("ip:").unwrap_or(s)),
        };
        let Ok(net) = cidr.parse::<Ipv4Net>() else {
            return Err(SpecError(if cidr.parse::<Ipv4Addr>().is_ok() {
                format!("'{s}' has no prefix length: write it like {cidr}/24")
            } else {
                format!("'{s}' is not net:default, net:CIDR, ip:CIDR or CIDR")
            }));
        };
        if !is_net {
            return Ok(Self::Address(net));
        }
        if net.trunc() != net {
            return Err(SpecError(format!(
                "'{s}' is not a subnet address (did you mean net:{}?)",
                net.trunc()
            )));
        }
        if net.prefix_len() > 30 {
            return Err(SpecError(format!(
                "'{s}' is too small: a subnet needs at least 4 addresses"
            )));
        }
        Ok(Self::Subnet(net))
    }
}

/// Parses a whitespace-separated list of address specs (Weave's `WEAVE_CIDR` value).
pub fn parse_specs(list: &str) -> Result<Vec<AddrSpec>, SpecError> {
    list.split_whitespace().map(str::parse).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_forms_parse_like_weave() {
        assert_eq!(
            "net:default".parse::<AddrSpec>().unwrap(),
            AddrSpec::DefaultSubnet
        );
        assert_eq!(
            "net:10.32.1.0/24".parse::<AddrSpec>().unwrap(),
            AddrSpec::Subnet("10.32.1.0/24".parse().unwrap())
        );
        assert_eq!(
            "ip:10.32.1.7/24".parse::<AddrSpec>().unwrap(),
            AddrSpec::Address("10.32.1.7/24".parse().unwrap())
        );
        assert_eq!(
            "10.32.1.7/24".parse::<AddrSpec>().unwrap(),
            AddrSpec::Address("10.32.1.7/24".parse().unwrap())
        );
        let bare = "10.32.1.7".parse::<AddrSpec>().unwrap_err().to_string();
        assert!(bare.contains("no prefix length"), "{bare}");
        let host_bits = "net:10.32.1.7/24"
            .parse::<AddrSpec>()
            .unwrap_err()
            .to_string();
        assert!(host_bits.contains("net:10.32.1.0/24"), "{host_bits}");
        assert!("net:10.32.1.0/31".parse::<AddrSpec>().is_err());
        assert!("garbage".parse::<AddrSpec>().is_err());
        assert_eq!(parse_specs("  ").unwrap(), []);
        assert_eq!(
            parse_specs("net:default 10.2.1.1/24").unwrap(),
            [
                AddrSpec::DefaultSubnet,
                AddrSpec::Address("10.2.1.1/24".parse().unwrap())
            ]
        );
        let bad = parse_specs("net:default x").unwrap_err().to_string();
        assert!(bad.contains("'x'"), "{bad}");
    }
}
