//! The TXT records of a herd service: the ones this node announces, and the reading of a
//! resolved peer's records and addresses into a [`Found`]. Pure: no daemon, no sockets; a
//! malformed record is a [`TxtError`], never a panic.

use mdns_sd::{ResolvedService, ScopedIp, TxtProperties};
use std::net::{SocketAddr, SocketAddrV6};

use super::{format_node_id, Announce, Found, PROTOCOL_VERSION};

/// The TXT records announcing `me`, started as `boot`.
pub(super) fn txt_records(me: &Announce, boot: u64) -> Vec<(&'static str, String)> {
    vec![
        ("id", format_node_id(me.node_id)),
        ("cluster", me.cluster.clone()),
        ("env", me.env.clone()),
        ("api", me.api_port.to_string()),
        ("peer", me.peer_port.to_string()),
        ("proto", PROTOCOL_VERSION.to_string()),
        ("boot", format!("{boot:016x}")),
    ]
}

/// Why a resolved service is not a herd node we can report.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum TxtError {
    #[error("TXT record {0:?} is missing")]
    Missing(&'static str),
    #[error("TXT record {key:?} is not valid: {why}")]
    Garbled {
        key: &'static str,
        why: &'static str,
    },
    #[error("service port {srv} differs from TXT peer port {txt}")]
    PortMismatch { srv: u16, txt: u16 },
}

/// The identity a herd node states in its TXT records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Txt {
    pub(super) node_id: u64,
    pub(super) cluster: String,
    pub(super) env: String,
    pub(super) api_port: u16,
    pub(super) peer_port: u16,
    pub(super) proto: u32,
    pub(super) boot: u64,
}

/// Reads a herd node's TXT records; extra keys are ignored (later versions may add some).
pub(super) fn parse_txt(props: &TxtProperties) -> Result<Txt, TxtError> {
    let node_id = hex64(props, "id")?;
    let name = |key| {
        let value = field(props, key)?;
        if value.is_empty() {
            return Err(TxtError::Garbled { key, why: "empty" });
        }
        Ok(value.to_string())
    };
    let port = |key| match number::<u16>(props, key)? {
        0 => Err(TxtError::Garbled { key, why: "port 0" }),
        port => Ok(port),
    };
    Ok(Txt {
        node_id,
        cluster: name("cluster")?,
        env: name("env")?,
        api_port: port("api")?,
        peer_port: port("peer")?,
        proto: number::<u32>(props, "proto")?,
        boot: hex64(props, "boot")?,
    })
}

/// The value of `key` as exactly 16 hex digits.
fn hex64(props: &TxtProperties, key: &'static str) -> Result<u64, TxtError> {
    let value = field(props, key)?;
    let garbled = TxtError::Garbled {
        key,
        why: "expected 16 hex digits",
    };
    if value.len() != 16 || !value.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(garbled);
    }
    u64::from_str_radix(value, 16).map_err(|_| garbled)
}

/// The value of `key` as UTF-8 text; a key without a value counts as missing.
fn field<'a>(props: &'a TxtProperties, key: &'static str) -> Result<&'a str, TxtError> {
    let value = props
        .get_property_val(key)
        .flatten()
        .ok_or(TxtError::Missing(key))?;
    std::str::from_utf8(value).map_err(|_| TxtError::Garbled {
        key,
        why: "not UTF-8",
    })
}

/// The value of `key` as a decimal number: digits only, no sign or spaces.
fn number<T: std::str::FromStr>(props: &TxtProperties, key: &'static str) -> Result<T, TxtError> {
    let value = field(props, key)?;
    let garbled = TxtError::Garbled {
        key,
        why: "expected a decimal number in range",
    };
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(garbled);
    }
    value.parse().map_err(|_| garbled)
}

/// A resolved service as a `Found`: its TXT records, and its addresses with its service port
/// (which must be the peer port it states).
pub(super) fn found_from(service: &ResolvedService) -> Result<Found, TxtError> {
    let txt = parse_txt(&service.txt_properties)?;
    if txt.peer_port != service.port {
        return Err(TxtError::PortMismatch {
            srv: service.port,
            txt: txt.peer_port,
        });
    }
    let mut peer_addrs: Vec<SocketAddr> = service
        .addresses
        .iter()
        .map(|ip| socket_addr(ip, service.port))
        .collect();
    peer_addrs.sort();
    peer_addrs.dedup();
    Ok(Found {
        node_id: txt.node_id,
        cluster: txt.cluster,
        env: txt.env,
        proto: txt.proto,
        boot: txt.boot,
        api_port: txt.api_port,
        peer_addrs,
    })
}

pub(super) fn socket_addr(ip: &ScopedIp, port: u16) -> SocketAddr {
    match ip {
        ScopedIp::V6(v6) if v6.addr().is_unicast_link_local() => {
            SocketAddr::V6(SocketAddrV6::new(*v6.addr(), port, 0, v6.scope_id().index))
        }
        other => SocketAddr::new(other.to_ip_addr(), port),
    }
}
