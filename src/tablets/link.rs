//! The pairing link a tablet opens, `https://<host>:<port>/kiosk/#pair=<secret>`, and the same link
//! as a QR code: text blocks for a terminal (`facegate tablets add`), inline SVG for the admin page.
//! The secret rides in the fragment, which browsers never send to a server or put in a Referer.

use std::net::{IpAddr, SocketAddr};

use qrcode::render::{svg, unicode};
use qrcode::QrCode;

/// The link that pairs a tablet, for the daemon at `host` on `port`.
pub fn pairing_link(https: bool, host: &str, port: u16, secret: &str) -> String {
    let scheme = if https { "https" } else { "http" };
    let host = match host.parse::<IpAddr>() {
        Ok(IpAddr::V6(v6)) => format!("[{v6}]"),
        _ => host.to_string(),
    };
    format!("{scheme}://{host}:{port}/kiosk/#pair={secret}")
}

/// The address a tablet on the LAN reaches the daemon at: the listening address when it is a specific
/// one, else the address of the Pi's default route (`routed`), else, on a LAN without a gateway (a door
/// network kept off the internet has none), the first address of an interface other than loopback
/// (IPv4 first; IPv6 only when the daemon listens on IPv6), else `localhost`.
pub fn lan_host(listen: SocketAddr, routed: Option<IpAddr>, interfaces: &[IpAddr]) -> String {
    let ip = listen.ip();
    if !ip.is_unspecified() {
        return ip.to_string();
    }
    let reachable =
        |candidate: &IpAddr| !candidate.is_loopback() && (ip.is_ipv6() || candidate.is_ipv4());
    routed
        .filter(reachable)
        .or_else(|| {
            interfaces
                .iter()
                .copied()
                .filter(reachable)
                .min_by_key(IpAddr::is_ipv6)
        })
        .map_or_else(|| "localhost".to_string(), |ip| ip.to_string())
}

fn code(link: &str) -> QrCode {
    // A link of a few dozen characters always fits a QR code.
    QrCode::new(link.as_bytes()).expect("a pairing link fits in a QR code")
}

/// The link as a QR code of text blocks, for a terminal with a dark background (dark modules are left
/// blank, light ones drawn), quiet zone included.
pub fn qr_text(link: &str) -> String {
    code(link)
        .render::<unicode::Dense1x2>()
        .dark_color(unicode::Dense1x2::Light)
        .light_color(unicode::Dense1x2::Dark)
        .quiet_zone(true)
        .build()
}

/// The link as an inline SVG element, black on white, at least `side` pixels wide.
pub fn qr_svg(link: &str, side: u32) -> String {
    code(link)
        .render::<svg::Color<'_>>()
        .min_dimensions(side, side)
        .dark_color(svg::Color("#000000"))
        .light_color(svg::Color("#ffffff"))
        .quiet_zone(true)
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_follow_the_pairing_contract() {
        assert_eq!(
            pairing_link(true, "192.168.1.20", 8443, "c2VjcmV0"),
            "https://192.168.1.20:8443/kiosk/#pair=c2VjcmV0"
        );
        assert_eq!(
            pairing_link(true, "fd00::1", 8443, "s"),
            "https://[fd00::1]:8443/kiosk/#pair=s"
        );
        let any: SocketAddr = "0.0.0.0:8443".parse().unwrap();
        let specific: SocketAddr = "10.0.0.5:8443".parse().unwrap();
        let routed = Some("192.168.1.20".parse().unwrap());
        assert_eq!(lan_host(any, routed, &[]), "192.168.1.20");
        assert_eq!(lan_host(specific, routed, &[]), "10.0.0.5");
        assert_eq!(lan_host(any, None, &[]), "localhost");
    }

    /// Regression: on a LAN without a default gateway the pairing link named `localhost`, which the
    /// tablet resolves to itself.
    #[test]
    fn a_lan_without_a_gateway_gets_an_interface_address_not_localhost() {
        let ips = |list: &[&str]| {
            list.iter()
                .map(|ip| ip.parse().unwrap())
                .collect::<Vec<IpAddr>>()
        };
        let v4_any: SocketAddr = "0.0.0.0:8443".parse().unwrap();
        let v6_any: SocketAddr = "[::]:8443".parse().unwrap();
        let door_lan = ips(&["127.0.0.1", "::1", "fd00::20", "10.20.0.5"]);
        let table = [
            (
                v4_any,
                ips(&[]),
                door_lan.clone(),
                "10.20.0.5",
                "no gateway: the LAN's address",
            ),
            (
                v6_any,
                ips(&[]),
                door_lan.clone(),
                "10.20.0.5",
                "IPv4 first",
            ),
            (
                v6_any,
                ips(&[]),
                ips(&["::1", "fd00::20"]),
                "fd00::20",
                "IPv6 only",
            ),
            (
                v4_any,
                ips(&[]),
                ips(&["::1", "fd00::20"]),
                "localhost",
                "IPv6 only, daemon on IPv4",
            ),
            (
                v4_any,
                ips(&["127.0.0.1"]),
                door_lan,
                "10.20.0.5",
                "a loopback route is no route",
            ),
        ];
        for (listen, routed, interfaces, host, what) in table {
            assert_eq!(
                lan_host(listen, routed.first().copied(), &interfaces),
                host,
                "{what}"
            );
        }
    }

    #[test]
    fn the_qr_code_renders_as_text_and_as_svg() {
        let link = pairing_link(true, "192.168.1.20", 8443, &"A".repeat(22));
        let text = qr_text(&link);
        assert!(text.lines().count() > 10 && text.contains('█'), "{text}");
        let svg = qr_svg(&link, 240);
        assert!(svg.contains("<svg") && svg.contains("</svg>"), "{svg}");
    }
}
