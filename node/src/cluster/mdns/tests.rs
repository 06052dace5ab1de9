//! Tests of the TXT records (ours parse back; missing, garbled and raw wire records are
//! refused), of the interface choice and of the peer addresses.

use super::txt::{parse_txt, socket_addr, txt_records, Txt, TxtError};
use super::*;
use mdns_sd::{IntoTxtProperties, ScopedIp, TxtProperties};
use std::net::IpAddr;

fn me() -> Announce {
    Announce {
        node_id: 0x00ab_cdef_0123_4567,
        cluster: "lab".into(),
        env: "testing".into(),
        api_port: 7440,
        peer_port: 7441,
    }
}

fn props(pairs: &[(&str, &str)]) -> TxtProperties {
    pairs.into_txt_properties()
}

/// TXT records as they come off the wire: length-prefixed strings.
fn wire(strings: &[&[u8]]) -> TxtProperties {
    let mut bytes = Vec::new();
    for s in strings {
        bytes.push(u8::try_from(s.len()).expect("test strings are short"));
        bytes.extend_from_slice(s);
    }
    TxtProperties::from(&bytes[..])
}

const GOOD: [(&str, &str); 7] = [
    ("id", "00abcdef01234567"),
    ("cluster", "lab"),
    ("env", "testing"),
    ("api", "7440"),
    ("peer", "7441"),
    ("proto", "1"),
    ("boot", "0123456789abcdef"),
];

/// `GOOD` with `key` replaced by `value`, or removed when `value` is `None`.
fn good_but(key: &str, value: Option<&str>) -> TxtProperties {
    let pairs: Vec<(&str, &str)> = GOOD
        .iter()
        .filter_map(|&(k, v)| match k == key {
            true => value.map(|value| (k, value)),
            false => Some((k, v)),
        })
        .collect();
    props(&pairs)
}

#[test]
fn our_records_parse_back() {
    let txt = parse_txt(&txt_records(&me(), 0xb007)[..].into_txt_properties()).unwrap();
    assert_eq!(
        txt,
        Txt {
            node_id: 0x00ab_cdef_0123_4567,
            cluster: "lab".into(),
            env: "testing".into(),
            api_port: 7440,
            peer_port: 7441,
            proto: PROTOCOL_VERSION,
            boot: 0xb007,
        }
    );
}

#[test]
fn good_records_parse_and_extra_keys_are_ignored() {
    let mut pairs = GOOD.to_vec();
    pairs.push(("future", "whatever"));
    let txt = parse_txt(&props(&pairs)).unwrap();
    assert_eq!(txt.node_id, 0x00ab_cdef_0123_4567);
    assert_eq!((txt.cluster.as_str(), txt.env.as_str()), ("lab", "testing"));
    // Keys are case-insensitive in DNS-SD, and upper-case hex is still hex.
    let upper = props(&[
        ("ID", "00ABCDEF01234567"),
        ("Cluster", "lab"),
        ("ENV", "staging"),
        ("api", "1"),
        ("peer", "65535"),
        ("proto", "2"),
        ("Boot", "FFFFFFFFFFFFFFFF"),
    ]);
    let txt = parse_txt(&upper).unwrap();
    assert_eq!(txt.node_id, 0x00ab_cdef_0123_4567);
    assert_eq!((txt.peer_port, txt.proto, txt.boot), (65535, 2, u64::MAX));
}

#[test]
fn every_missing_field_is_named() {
    for (key, _) in GOOD {
        assert_eq!(
            parse_txt(&good_but(key, None)),
            Err(TxtError::Missing(key)),
            "without {key}"
        );
    }
}

#[test]
fn garbled_fields_are_refused() {
    let cases = [
        ("id", "abcdef0123456789a"), // 17 digits
        ("id", "abcdef012345678"),   // 15 digits
        ("id", "+bcdef0123456789"),  // a sign from_str_radix would take
        ("id", "abcdefg123456789"),
        ("id", ""),
        ("cluster", ""),
        ("env", ""),
        ("api", "0"),
        ("api", "65536"),
        ("api", "+80"),
        ("api", " 80"),
        ("peer", "-1"),
        ("peer", "http"),
        ("proto", ""),
        ("proto", "1.0"),
        ("proto", "99999999999"),
        ("boot", "1"),
        ("boot", "0x23456789abcdef"),
    ];
    for (key, value) in cases {
        let result = parse_txt(&good_but(key, Some(value)));
        assert!(
            matches!(result, Err(TxtError::Garbled { key: k, .. }) if k == key),
            "{key}={value:?} gave {result:?}"
        );
    }
}

#[test]
fn raw_wire_records_that_are_not_text_or_have_no_value_are_refused() {
    let good: Vec<Vec<u8>> = GOOD
        .iter()
        .map(|(k, v)| format!("{k}={v}").into_bytes())
        .collect();
    let good: Vec<&[u8]> = good.iter().map(Vec::as_slice).collect();
    assert!(parse_txt(&wire(&good)).is_ok());

    // A boolean key (no "=") for `cluster`, and a non-UTF-8 environment.
    let mut no_value = good.clone();
    no_value[1] = b"cluster";
    assert_eq!(
        parse_txt(&wire(&no_value)),
        Err(TxtError::Missing("cluster"))
    );
    let mut binary = good.clone();
    binary[2] = b"env=\xff\xfe";
    assert!(matches!(
        parse_txt(&wire(&binary)),
        Err(TxtError::Garbled { key: "env", .. })
    ));
    // A duplicate key: the first one counts (RFC 6763 section 6.4).
    let mut duplicate = good.clone();
    duplicate.insert(0, b"env=first");
    assert_eq!(parse_txt(&wire(&duplicate)).unwrap().env, "first");
    // Random bytes never panic.
    for seed in 0u8..=255 {
        let junk: Vec<u8> = (0..64u8)
            .map(|i| i.wrapping_mul(seed).wrapping_add(seed))
            .collect();
        let _ = parse_txt(&TxtProperties::from(&junk[..]));
    }
}

#[test]
fn named_interfaces_must_exist_and_have_valid_names() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("eth0")).unwrap();
    let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        choose_interfaces(dir.path(), &names(&["eth0", "eth0"])).unwrap(),
        Interfaces::Named(names(&["eth0"]))
    );
    assert!(matches!(
        choose_interfaces(dir.path(), &names(&["eth0", "eth9"])),
        Err(Error::NoSuchInterface(n)) if n == "eth9"
    ));
    for bad in ["", ".", "..", "a/b", "eth 0", "averyveryverylongname"] {
        assert!(
            matches!(
                choose_interfaces(dir.path(), &names(&[bad])),
                Err(Error::BadInterfaceName(_))
            ),
            "{bad:?}"
        );
    }
}

#[test]
fn no_named_interface_means_all_but_loopback_and_none_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let add = |name: &str, flags: &str| {
        std::fs::create_dir(dir.path().join(name)).unwrap();
        std::fs::write(dir.path().join(name).join("flags"), flags).unwrap();
    };
    add("lo", "0x9\n");
    assert!(matches!(
        choose_interfaces(dir.path(), &[]),
        Err(Error::NoInterface)
    ));
    add("eth1", "0x1003\n");
    add("eth0", "0x1003\n");
    assert_eq!(
        choose_interfaces(dir.path(), &[]).unwrap(),
        Interfaces::AllButLoopback(vec!["eth0".into(), "eth1".into()])
    );
}

#[test]
fn socket_addresses_carry_the_service_port() {
    let v4: ScopedIp = IpAddr::from([10, 77, 1, 2]).into();
    assert_eq!(socket_addr(&v4, 7441), "10.77.1.2:7441".parse().unwrap());
    let global: ScopedIp = "2001:db8::1".parse::<IpAddr>().unwrap().into();
    assert_eq!(
        socket_addr(&global, 7441),
        "[2001:db8::1]:7441".parse().unwrap()
    );
}
