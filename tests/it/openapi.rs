//! The OpenAPI document (issue 10): every route the router serves is in it with its methods
//! (read from the router's source, so that a new route without a description fails here),
//! every schema it refers to is defined, Swagger UI is served from the daemon itself, and
//! requests generated from the document (hostile path ids, bodies of the wrong shape, garbage
//! query values, no or a wrong token) never get a 5xx.

use crate::harness::spawn_app;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::collections::BTreeSet;

/// (METHOD, path) of every `.route(...)` in the REST router's source.
fn routes_in_source() -> BTreeSet<(String, String)> {
    let source =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/api/mod.rs")).unwrap();
    let method = regex_lite_methods();
    let mut routes = BTreeSet::new();
    let mut rest = source.as_str();
    while let Some(start) = rest.find(".route(") {
        let after = &rest[start + ".route(".len()..];
        // The call's text, up to its closing parenthesis.
        let mut depth = 1;
        let mut end = 0;
        for (i, c) in after.char_indices() {
            match c {
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    if depth == 0 {
                        end = i;
                        break;
                    }
                }
                _ => {}
            }
        }
        let call = &after[..end];
        let path = call.split('"').nth(1).unwrap().to_owned();
        for m in &method {
            if call.contains(&format!("{m}(")) {
                routes.insert((m.to_uppercase(), path.clone()));
            }
        }
        rest = &after[end..];
    }
    routes
}

fn regex_lite_methods() -> Vec<&'static str> {
    vec!["get", "post", "put", "delete", "patch"]
}

fn operations(spec: &Value) -> Vec<(String, String, Value)> {
    let mut out = Vec::new();
    for (path, item) in spec["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            out.push((method.to_uppercase(), path.clone(), op.clone()));
        }
    }
    out
}

fn refs(value: &Value, found: &mut BTreeSet<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                if k == "$ref" {
                    found.insert(v.as_str().unwrap().to_owned());
                }
                refs(v, found);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| refs(v, found)),
        _ => {}
    }
}

#[tokio::test]
async fn every_route_is_described_and_swagger_ui_is_served_locally() {
    let app = spawn_app().await;
    let (status, spec) = app
        .request(reqwest::Method::GET, None, "/api/v1/openapi.json", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{spec}");
    assert!(
        spec["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        spec["openapi"]
    );
    let described: BTreeSet<(String, String)> = operations(&spec)
        .into_iter()
        .map(|(m, p, _)| (m, p))
        .collect();
    let served = routes_in_source();
    assert!(served.len() >= 35, "{served:?}");
    let missing: Vec<_> = served.difference(&described).collect();
    assert!(
        missing.is_empty(),
        "routes not in the OpenAPI document: {missing:?}"
    );
    let extra: Vec<_> = described.difference(&served).collect();
    assert!(extra.is_empty(), "described but not served: {extra:?}");
    // Every operation says what it answers, and every schema it names is defined.
    for (method, path, op) in operations(&spec) {
        assert!(
            op["responses"].as_object().is_some_and(|r| !r.is_empty()),
            "{method} {path}"
        );
    }
    let mut found = BTreeSet::new();
    refs(&spec, &mut found);
    assert!(!found.is_empty());
    let undefined: Vec<String> = found
        .into_iter()
        .filter(|r| {
            !spec["components"]["schemas"][r.trim_start_matches("#/components/schemas/")]
                .is_object()
        })
        .collect();
    assert!(
        undefined.is_empty(),
        "referred to, not defined: {undefined:?}"
    );
    assert_eq!(
        spec["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    // Swagger UI, from the daemon: no CDN.
    let page = app
        .http
        .get(format!("{}/api/docs/", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.unwrap();
    assert!(html.contains("swagger-ui"), "{html}");
    assert!(!html.contains("https://"), "{html}");
    for asset in [
        "swagger-ui.css",
        "swagger-ui-bundle.js",
        "swagger-initializer.js",
    ] {
        let response = app
            .http
            .get(format!("{}/api/docs/{asset}", app.base))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{asset}");
        let text = response.text().await.unwrap();
        if asset == "swagger-initializer.js" {
            assert!(text.contains("/api/v1/openapi.json"), "{text}");
        }
    }
    app.stop().await;
}

/// A small deterministic generator (xorshift): the seed is printed with any failure.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

const STRINGS: &[&str] = &[
    "",
    "x",
    "staging",
    "development",
    "production",
    "data_ops_lead",
    "dba",
    "../../etc/passwd",
    "%2e%2e%2f",
    "a@b@c",
    "001_20260101_000000_x@staging",
    "V1__x",
    "'; DROP TABLE deployments; --",
    "\u{0}",
    "🙂",
    "-1",
    "99999999999999999999999",
    "true",
    "null",
];

fn value(rng: &mut Rng, depth: usize) -> Value {
    match rng.below(if depth > 2 { 6 } else { 8 }) {
        0 => Value::Null,
        1 => json!(rng.below(2) == 0),
        2 => json!(rng.next() as i64),
        3 => json!(-1.5e300),
        4 => json!("x".repeat(rng.below(3) * 70_000)),
        5 => json!(rng.pick(STRINGS)),
        6 => Value::Array((0..rng.below(4)).map(|_| value(rng, depth + 1)).collect()),
        _ => {
            let mut map = serde_json::Map::new();
            for _ in 0..rng.below(4) {
                map.insert(rng.pick(STRINGS).to_owned(), value(rng, depth + 1));
            }
            Value::Object(map)
        }
    }
}

/// A body for the operation: its schema's fields with values of any type, or something that
/// is not the schema's shape at all.
fn body(rng: &mut Rng, spec: &Value, op: &Value) -> Option<String> {
    let schema = &op["requestBody"]["content"]["application/json"]["schema"];
    if rng.below(6) == 0 {
        return Some(
            rng.pick(&[
                "",
                "{",
                "null",
                "[]",
                "\"x\"",
                "1e400",
                "{\"a\":",
                "\u{feff}{}",
            ])
            .to_owned(),
        );
    }
    if rng.below(8) == 0 {
        return Some(format!("{}1{}", "[".repeat(5000), "]".repeat(5000)));
    }
    let resolved = match schema["$ref"].as_str() {
        Some(r) => &spec["components"]["schemas"][r.trim_start_matches("#/components/schemas/")],
        None => schema,
    };
    let mut map = serde_json::Map::new();
    if let Some(properties) = resolved["properties"].as_object() {
        for name in properties.keys() {
            if rng.below(4) != 0 {
                map.insert(name.clone(), value(rng, 0));
            }
        }
    }
    if rng.below(5) == 0 {
        map.insert(rng.pick(STRINGS).to_owned(), value(rng, 0));
    }
    Some(Value::Object(map).to_string())
}

#[tokio::test]
async fn generated_requests_to_every_route_never_get_a_5xx() {
    let app = spawn_app().await;
    let (_, spec) = app
        .request(reqwest::Method::GET, None, "/api/v1/openapi.json", None)
        .await;
    let seed: u64 = std::env::var("SLUICE_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_2026_1129);
    let cases: usize = std::env::var("SLUICE_FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(24);
    let mut rng = Rng(seed);
    let encode = |s: &str| {
        percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
    };
    let mut sent = 0;
    for (method, path, op) in operations(&spec) {
        for case in 0..cases {
            let mut url = path.clone();
            while let Some(start) = url.find('{') {
                let end = url[start..].find('}').unwrap() + start;
                let id = if rng.below(10) == 0 {
                    "x".repeat(5000)
                } else {
                    rng.pick(STRINGS).to_owned()
                };
                url.replace_range(start..=end, &encode(&id));
            }
            let mut query = Vec::new();
            for parameter in op["parameters"].as_array().into_iter().flatten() {
                if parameter["in"] == "query" && rng.below(2) == 0 {
                    let name = parameter["name"].as_str().unwrap();
                    // wait=true would hold the request for up to an hour by design.
                    let value = match rng.pick(STRINGS) {
                        "true" if name == "wait" => "false",
                        other => other,
                    };
                    query.push(format!("{name}={}", encode(value)));
                }
            }
            if rng.below(8) == 0 {
                query.push(format!("{}=1", encode(rng.pick(STRINGS))));
            }
            if !query.is_empty() {
                url = format!("{url}?{}", query.join("&"));
            }
            let mut request = app.http.request(
                reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                format!("{}{url}", app.base),
            );
            request = match rng.below(6) {
                0 => request,
                1 => request.bearer_auth("not-a-token"),
                2 => request.bearer_auth(app.token("dev")),
                _ => request.bearer_auth(app.token("admin")),
            };
            if method != "GET"
                && method != "DELETE"
                && let Some(text) = body(&mut rng, &spec, &op)
            {
                request = request
                    .header("content-type", "application/json")
                    .body(text);
            }
            let response = request
                .timeout(std::time::Duration::from_secs(60))
                .send()
                .await
                .unwrap_or_else(|e| panic!("seed {seed} case {case}: {method} {url}: {e}"));
            let status = response.status();
            let text = response.text().await.unwrap_or_default();
            assert!(
                status.as_u16() < 500,
                "seed {seed} case {case}: {method} {url} answered {status}: {text}"
            );
            if status.is_client_error() {
                let error: Value = serde_json::from_str(&text)
                    .unwrap_or_else(|_| panic!("{method} {url} {status}: not JSON: {text}"));
                assert!(
                    error["error"]["message"]
                        .as_str()
                        .is_some_and(|m| !m.is_empty()),
                    "{method} {url} {status}: {text}"
                );
            }
            sent += 1;
        }
    }
    assert!(sent >= 35 * cases);
    app.stop().await;
}
