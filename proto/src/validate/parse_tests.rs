//! Tests of the value parsers: Docker's syntax accepted, bad values refused in words.

use super::*;
use crate::validate::{MAX_DURATION_MS, MAX_MEMORY_BYTES, MAX_NANO_CPUS};

#[test]
fn durations_follow_go_syntax() {
    assert_eq!(parse_duration("300ms"), Ok(300));
    assert_eq!(parse_duration("5s"), Ok(5_000));
    assert_eq!(parse_duration("1m30s"), Ok(90_000));
    assert_eq!(parse_duration("2h"), Ok(7_200_000));
    assert_eq!(parse_duration("0.3s"), Ok(300));
    assert_eq!(parse_duration("1.5h"), Ok(5_400_000));
    assert_eq!(parse_duration("0"), Ok(0));
    assert_eq!(parse_duration("1500us"), Ok(1));
    assert_eq!(parse_duration("999999ns"), Ok(0));
}

#[test]
fn bad_durations_are_refused_in_words() {
    assert!(parse_duration("-5s").unwrap_err().contains("negative"));
    assert!(parse_duration("5").unwrap_err().contains("missing unit"));
    assert!(parse_duration("5d").unwrap_err().contains("unknown unit"));
    assert!(parse_duration("").is_err());
    assert!(parse_duration("abc").is_err());
    assert!(parse_duration("s").is_err());
    assert!(parse_duration("1..2s").is_err());
    assert!(
        parse_duration("99999999999999999999h")
            .unwrap_err()
            .contains("over the limit")
    );
}

#[test]
fn sizes_use_binary_multiples() {
    assert_eq!(parse_bytes("1024"), Ok(1024));
    assert_eq!(parse_bytes("100k"), Ok(102_400));
    assert_eq!(parse_bytes("512m"), Ok(512 << 20));
    assert_eq!(parse_bytes("1g"), Ok(1 << 30));
    assert_eq!(parse_bytes("2GiB"), Ok(2 << 30));
    assert_eq!(parse_bytes("2GB"), Ok(2 << 30));
    assert_eq!(parse_bytes("1.5g"), Ok(3 << 29));
    assert_eq!(parse_bytes("10b"), Ok(10));
    assert_eq!(parse_bytes("1t"), Ok(1 << 40));
}

#[test]
fn bad_sizes_are_refused() {
    assert!(parse_bytes("-1g").unwrap_err().contains("negative"));
    assert!(parse_bytes("").is_err());
    assert!(parse_bytes("g").is_err());
    assert!(parse_bytes("12x").is_err());
    assert!(parse_bytes("1gg").is_err());
    assert!(
        parse_bytes("99999999p")
            .unwrap_err()
            .contains("over the limit")
    );
}

#[test]
fn durations_sizes_and_cpus_are_bounded() {
    assert_eq!(parse_duration("8760h"), Ok(MAX_DURATION_MS));
    for over in ["8760h1ms", "9000h", "1000000000000000000000000s"] {
        let err = parse_duration(over).expect_err(over);
        assert!(err.contains("over the limit of one year"), "{over}: {err}");
    }
    // A long fraction of a large unit once overflowed the u128 arithmetic.
    assert_eq!(
        parse_duration("0.999999999999999999999999999999h"),
        Ok(3_599_999)
    );
    assert_eq!(parse_bytes("64t"), Ok(MAX_MEMORY_BYTES));
    for over in ["64.001t", "1p", "18446744073709551615"] {
        let err = parse_bytes(over).expect_err(over);
        assert!(err.contains("over the limit of 64 TiB"), "{over}: {err}");
    }
    assert_eq!(parse_cpus("8192"), Ok(MAX_NANO_CPUS));
    for over in ["8192.000000001", "9223372036"] {
        let err = parse_cpus(over).expect_err(over);
        assert!(err.contains("over the limit of 8192 CPUs"), "{over}: {err}");
    }
}

#[test]
fn parse_errors_quote_a_bounded_prefix() {
    let long = "9".repeat(131_000);
    let cases = [
        parse_duration(&format!("{long}x")),
        parse_duration(&long),
        parse_bytes(&format!("{long}x")),
        parse_cpus(&format!("{long}x")),
        parse_publish(&format!("{long}:80")).map(|_| 0),
        parse_publish(&format!("{long}:80:1")).map(|_| 0),
        parse_mount(&format!("type={long}")).map(|_| 0),
        parse_mount(&format!("{long}=1")).map(|_| 0),
        parse_label(&format!("={long}")).map(|_| 0),
        parse_env_file(&format!("A {long}=1")).map(|_| 0),
    ];
    for case in cases {
        let err = case.expect_err("refused");
        assert!(err.len() < 300, "{} bytes: {}", err.len(), &err[..300]);
        assert!(err.contains("(131"), "{err}");
    }
}

#[test]
fn cpus_become_nano_cpus() {
    assert_eq!(parse_cpus("0.5"), Ok(500_000_000));
    assert_eq!(parse_cpus("2"), Ok(2_000_000_000));
    assert_eq!(parse_cpus(".25"), Ok(250_000_000));
    assert_eq!(parse_cpus("0.000000001"), Ok(1));
    assert!(parse_cpus("-1").unwrap_err().contains("negative"));
    assert!(parse_cpus("abc").is_err());
    assert!(parse_cpus("inf").is_err());
    assert!(parse_cpus("").is_err());
    assert!(parse_cpus("0.0000000001").unwrap_err().contains("precise"));
}

#[test]
fn publish_short_and_long_forms() {
    let p = parse_publish("8080:80").unwrap();
    assert_eq!((p.published_port, p.target_port), (8080, 80));
    assert_eq!(p.protocol(), PortProtocol::Tcp);
    assert_eq!(p.publish_mode(), PublishMode::Ingress);

    let p = parse_publish("8080:80/udp").unwrap();
    assert_eq!(p.protocol(), PortProtocol::Udp);

    let p = parse_publish("80").unwrap();
    assert_eq!((p.published_port, p.target_port), (0, 80));
    assert_eq!(p.publish_mode(), PublishMode::Host);

    let p = parse_publish("published=8080,target=80,mode=host,protocol=udp").unwrap();
    assert_eq!((p.published_port, p.target_port), (8080, 80));
    assert_eq!(p.publish_mode(), PublishMode::Host);
    assert_eq!(p.protocol(), PortProtocol::Udp);
}

#[test]
fn bad_publish_values_are_refused() {
    assert!(parse_publish("").is_err());
    assert!(parse_publish("x:80").unwrap_err().contains("published"));
    assert!(
        parse_publish("8080:70000")
            .unwrap_err()
            .contains("out of range")
    );
    assert!(
        parse_publish("8080:80/sctp")
            .unwrap_err()
            .contains("protocol")
    );
    assert!(
        parse_publish("1.2.3.4:8080:80")
            .unwrap_err()
            .contains("host IP")
    );
    assert!(
        parse_publish("8000-8001:80")
            .unwrap_err()
            .contains("ranges")
    );
    assert!(
        parse_publish("published=8080")
            .unwrap_err()
            .contains("target")
    );
    assert!(
        parse_publish("target=80,mode=bridge")
            .unwrap_err()
            .contains("mode")
    );
    assert!(
        parse_publish("target=80,colour=red")
            .unwrap_err()
            .contains("unknown field")
    );
}

#[test]
fn mounts_parse_docker_keys() {
    let m = parse_mount("type=bind,source=/a,target=/b,readonly").unwrap();
    assert_eq!(m.r#type(), MountType::Bind);
    assert_eq!(
        (m.source.as_str(), m.target.as_str(), m.read_only),
        ("/a", "/b", true)
    );

    let m = parse_mount("src=data,dst=/data").unwrap();
    assert_eq!(m.r#type(), MountType::Volume);
    assert_eq!(
        (m.source.as_str(), m.target.as_str(), m.read_only),
        ("data", "/data", false)
    );

    let m = parse_mount("type=tmpfs,destination=/tmp,ro=false").unwrap();
    assert_eq!(m.r#type(), MountType::Tmpfs);
    assert!(!m.read_only);
}

#[test]
fn bad_mounts_are_refused() {
    assert!(parse_mount("").is_err());
    assert!(
        parse_mount("type=bind,source=/a")
            .unwrap_err()
            .contains("target")
    );
    assert!(
        parse_mount("type=nfs,target=/a")
            .unwrap_err()
            .contains("mount type")
    );
    assert!(
        parse_mount("target=/a,volume-driver=x")
            .unwrap_err()
            .contains("unknown")
    );
    assert!(
        parse_mount("target=/a,readonly=maybe")
            .unwrap_err()
            .contains("readonly")
    );
    assert!(
        parse_mount("target=/a,bogus")
            .unwrap_err()
            .contains("key=value")
    );
}

#[test]
fn labels_and_env_files() {
    assert_eq!(parse_label("k=v"), Ok(("k".into(), "v".into())));
    assert_eq!(parse_label("k=a=b"), Ok(("k".into(), "a=b".into())));
    assert_eq!(parse_label("k"), Ok(("k".into(), String::new())));
    assert!(parse_label("=v").unwrap_err().contains("key is empty"));

    let env = parse_env_file("\u{feff}# comment\nA=1\n\n  B=two words\nHOME\n").unwrap();
    assert_eq!(env, vec!["A=1", "B=two words", "HOME"]);
    assert!(
        parse_env_file("A=1\n=2\n")
            .unwrap_err()
            .starts_with("line 2")
    );
    assert!(
        parse_env_file("MY VAR=1")
            .unwrap_err()
            .contains("whitespace")
    );
}
