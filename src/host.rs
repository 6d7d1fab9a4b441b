//! The Pi's own names and addresses, as a tablet on the LAN would use them: its host name, the address
//! of its default route, and the addresses of its network interfaces. The TLS certificate names them
//! all; the pairing link uses the default route's.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, UdpSocket};

/// The kernel's host name, unless it is empty or `localhost`.
pub fn host_name() -> Option<String> {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let host = host.trim();
    (!host.is_empty() && host != "localhost").then(|| host.to_string())
}

/// The source address of the default route. Connecting a UDP socket sends nothing; it only asks the
/// kernel which address it would use.
pub fn routed_address() -> Option<IpAddr> {
    UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
        .and_then(|s| s.connect((Ipv4Addr::new(192, 0, 2, 1), 9)).map(|()| s))
        .and_then(|s| s.local_addr())
        .ok()
        .map(|address| address.ip())
}

/// The addresses of every interface that is up (loopback included), IPv4 and IPv6, in the order the
/// kernel lists them. IPv6 link-local addresses are left out: a URL cannot carry them without a zone.
pub fn interface_addresses() -> Vec<IpAddr> {
    let mut addresses = Vec::new();
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list` with a linked list we own until freeifaddrs.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return addresses;
    }
    let mut entry = list;
    while !entry.is_null() {
        // SAFETY: `entry` is a node of the list getifaddrs returned, not yet freed.
        let ifaddr = unsafe { &*entry };
        entry = ifaddr.ifa_next;
        let up = ifaddr.ifa_flags & libc::IFF_UP as libc::c_uint != 0;
        if !up || ifaddr.ifa_addr.is_null() {
            continue;
        }
        // SAFETY: ifa_addr points to a sockaddr whose family says which struct it is.
        let address = unsafe {
            match i32::from((*ifaddr.ifa_addr).sa_family) {
                libc::AF_INET => {
                    let v4 = &*(ifaddr.ifa_addr as *const libc::sockaddr_in);
                    Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr))))
                }
                libc::AF_INET6 => {
                    let v6 = &*(ifaddr.ifa_addr as *const libc::sockaddr_in6);
                    Some(IpAddr::V6(Ipv6Addr::from(v6.sin6_addr.s6_addr)))
                }
                _ => None,
            }
        };
        if let Some(address) = address {
            let link_local =
                matches!(address, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80);
            if !link_local && !addresses.contains(&address) {
                addresses.push(address);
            }
        }
    }
    // SAFETY: frees the list getifaddrs made, once; no reference into it outlives this point.
    unsafe { libc::freeifaddrs(list) };
    addresses
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_loopback_interface_is_listed() {
        let addresses = interface_addresses();
        assert!(
            addresses.contains(&IpAddr::V4(Ipv4Addr::LOCALHOST)),
            "{addresses:?}"
        );
    }
}
