//! The client's address, for the sign-up and login limits: the TCP peer,
//! or, only when the peer is a trusted proxy (`CHAT_TRUSTED_PROXIES`), the
//! nearest address in `X-Forwarded-For` that is not itself a trusted proxy.
//! With no trusted proxies configured (the default) the header is ignored,
//! so a client cannot pick its own address.

use std::{
    convert::Infallible,
    net::{IpAddr, SocketAddr},
};

use axum::{
    extract::{ConnectInfo, FromRequestParts},
    http::{HeaderMap, request::Parts},
};

use crate::{config::IpNet, state::AppState};

/// The client's address (`None` only when the server runs without peer
/// addresses, as in router tests).
pub struct ClientIp(pub Option<IpAddr>);

/// The client's address given the peer, the headers and the trusted proxies.
pub fn client_ip(peer: Option<IpAddr>, headers: &HeaderMap, trusted: &[IpNet]) -> Option<IpAddr> {
    let peer = peer?;
    let is_trusted = |ip: IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(peer) {
        return Some(peer);
    }
    // Right to left: each trusted proxy appended the address it saw.
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let mut client = peer;
    for hop in hops.into_iter().rev() {
        let Some(ip) = parse_hop(hop) else {
            // Garbage from the far side: stop at the last address we trust.
            break;
        };
        client = ip;
        if !is_trusted(ip) {
            break;
        }
    }
    Some(client)
}

fn parse_hop(hop: &str) -> Option<IpAddr> {
    hop.parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<SocketAddr>().ok().map(|s| s.ip()))
}

impl FromRequestParts<AppState> for ClientIp {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Infallible> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        Ok(ClientIp(client_ip(
            peer,
            &parts.headers,
            &state.config.trusted_proxies,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(xff: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in xff {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn forwarded_for_counts_only_behind_a_trusted_proxy() {
        let none: Vec<IpNet> = vec![];
        let proxies = vec![IpNet::parse("10.0.0.0/8").unwrap()];
        let spoofed = headers(&["6.6.6.6"]);
        assert_eq!(
            client_ip(ip("203.0.113.9"), &spoofed, &none),
            ip("203.0.113.9"),
            "off by default"
        );
        assert_eq!(
            client_ip(ip("203.0.113.9"), &spoofed, &proxies),
            ip("203.0.113.9"),
            "peer not a proxy"
        );
        // Behind the ingress: the client's own prefix is ignored, the hop the
        // proxy appended counts.
        let via = headers(&["6.6.6.6, 198.51.100.4", "10.0.0.7"]);
        assert_eq!(
            client_ip(ip("10.0.0.5"), &via, &proxies),
            ip("198.51.100.4")
        );
        assert_eq!(
            client_ip(ip("10.0.0.5"), &headers(&[]), &proxies),
            ip("10.0.0.5")
        );
        assert_eq!(
            client_ip(ip("10.0.0.5"), &headers(&["junk, 10.0.0.9"]), &proxies),
            ip("10.0.0.9")
        );
        assert_eq!(
            client_ip(ip("10.0.0.5"), &headers(&["[2001:db8::1]:443"]), &proxies),
            ip("2001:db8::1")
        );
        assert_eq!(client_ip(None, &via, &proxies), None);
    }
}
