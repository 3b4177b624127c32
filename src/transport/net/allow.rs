//! `--allow` peer filtering: CIDR blocks over IPv4 and IPv6.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// One network block, e.g. `10.0.0.0/8`, `fd00::/8`, or a bare address
/// (`192.0.2.7` = `/32`, `::1` = `/128`). Host bits below the prefix are
/// cleared when parsing, so `10.1.2.3/8` means `10.0.0.0/8`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

/// A `--allow` value that is not an address or CIDR block.
#[derive(Debug, thiserror::Error)]
#[error("invalid CIDR '{value}': {reason} (expected an IP address or a block such as 10.0.0.0/8 or fd00::/8)")]
pub struct CidrError {
    value: String,
    reason: &'static str,
}

impl Cidr {
    pub fn network(&self) -> IpAddr {
        self.network
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// True if `ip` lies in this block. An IPv4-mapped IPv6 peer
    /// (`::ffff:a.b.c.d`, what a socket bound to `[::]` reports for an IPv4
    /// client) is matched as the IPv4 address it carries, so IPv4 rules keep
    /// working when the receiver listens on `[::]`.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = v4_mask(self.prefix);
                u32::from(ip) & mask == u32::from(net)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = v6_mask(self.prefix);
                u128::from(ip) & mask == u128::from(net)
            }
            (IpAddr::V6(net), IpAddr::V4(ip)) => {
                let mask = v6_mask(self.prefix);
                u128::from(ip.to_ipv6_mapped()) & mask == u128::from(net)
            }
            (IpAddr::V4(_), IpAddr::V6(_)) => false,
        }
    }
}

fn v4_mask(prefix: u8) -> u32 {
    // A /0 shift would overflow; checked_shl turns it into "no bits".
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn v6_mask(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Cidr, CidrError> {
        let err = |reason| CidrError {
            value: s.to_string(),
            reason,
        };
        let (addr, prefix) = match s.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s.trim(), None),
        };
        let ip: IpAddr = addr.parse().map_err(|_| err("not an IP address"))?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(p) if p <= max => p,
                _ if ip.is_ipv4() => return Err(err("the prefix length must be 0 to 32")),
                _ => return Err(err("the prefix length must be 0 to 128")),
            },
        };
        let network = match ip {
            IpAddr::V4(v4) => IpAddr::V4((u32::from(v4) & v4_mask(prefix)).into()),
            IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & v6_mask(prefix)).into()),
        };
        Ok(Cidr { network, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// The peers a listener accepts. Empty means everyone: the filter is opt-in,
/// and [`crate::transport::net::Listener::bind`] warns when that leaves a wildcard
/// address open to the whole network.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList(pub Vec<Cidr>);

impl AllowList {
    pub fn permits(&self, ip: IpAddr) -> bool {
        self.0.is_empty() || self.0.iter().any(|c| c.contains(ip))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn cidr(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_blocks_and_bare_addresses() {
        assert_eq!(cidr("10.0.0.0/8").to_string(), "10.0.0.0/8");
        assert_eq!(cidr("10.1.2.3/8").to_string(), "10.0.0.0/8");
        assert_eq!(cidr("192.0.2.7").to_string(), "192.0.2.7/32");
        assert_eq!(cidr("::1").to_string(), "::1/128");
        assert_eq!(cidr("fd12:3456::1/16").to_string(), "fd12::/16");
        assert_eq!(cidr("0.0.0.0/0").to_string(), "0.0.0.0/0");
        assert_eq!(cidr("::/0").to_string(), "::/0");
    }

    #[test]
    fn rejects_bad_values_naming_them() {
        for bad in [
            "",
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/",
            "10.0.0/8",
            "host",
            "10.0.0.0/x",
            "1.2.3.4/-1",
        ] {
            let e = bad.parse::<Cidr>().unwrap_err().to_string();
            assert!(e.contains(&format!("'{bad}'")), "{e}");
        }
    }

    #[test]
    fn matches_v4_v6_and_mapped_peers() {
        let net = cidr("10.0.0.0/8");
        assert!(net.contains(ip("10.255.0.1")));
        assert!(!net.contains(ip("11.0.0.1")));
        assert!(net.contains(ip("::ffff:10.1.2.3")));
        assert!(!net.contains(ip("::1")));
        assert!(cidr("0.0.0.0/0").contains(ip("203.0.113.9")));
        assert!(cidr("127.0.0.1").contains(ip("127.0.0.1")));
        assert!(!cidr("127.0.0.1").contains(ip("127.0.0.2")));

        let v6 = cidr("fd00::/8");
        assert!(v6.contains(ip("fd00::1")));
        assert!(!v6.contains(ip("fe80::1")));
        assert!(!v6.contains(ip("10.0.0.1")));
        assert!(cidr("::ffff:10.0.0.0/104").contains(ip("10.9.9.9")));
        assert!(cidr("::/0").contains(ip("2001:db8::1")));
    }

    #[test]
    fn empty_list_permits_all() {
        assert!(AllowList::default().permits(ip("198.51.100.1")));
        let list = AllowList(vec![cidr("127.0.0.0/8"), cidr("::1")]);
        assert!(list.permits(ip("127.0.0.1")));
        assert!(list.permits(ip("::1")));
        assert!(!list.permits(ip("192.0.2.1")));
    }
}
