//! Keeps src/domain pure: no async runtime, database, HTTP or RPC crate may appear there.

#[test]
fn domain_does_no_io() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/domain");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        for forbidden in [
            "tokio",
            "sqlx",
            "axum",
            "tonic",
            "reqwest",
            "std::fs",
            "Utc::now",
            "SystemTime",
        ] {
            assert!(
                !text.contains(forbidden),
                "{} mentions {forbidden}: src/domain must stay free of I/O and clocks",
                path.display()
            );
        }
        checked += 1;
    }
    assert!(checked >= 3);
}
