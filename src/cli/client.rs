//! The gRPC connection to the daemon, with the token, and how its errors become exit codes.

use super::*;

/// The connection to the daemon, with the token.
pub(super) struct Client {
    pub(super) inner: SluiceClient<Channel>,
    pub(super) token: Option<String>,
    pub(super) server: String,
}

impl Client {
    pub(super) async fn connect(server: &str, token: Option<String>) -> CliResult<Client> {
        // `127.0.0.1:50051` (no scheme) is the plain-HTTP address it names; without this the
        // host was read as a scheme.
        let server = &if server.contains("://") {
            server.to_owned()
        } else {
            format!("http://{server}")
        };
        let unreachable = |reason: String| Failure {
            code: 3,
            message: format!(
                "cannot reach sluice at {server} ({reason}); start it with \"sluice server\" or set SLUICE_ADDR"
            ),
            api_code: Some("unavailable"),
        };
        let endpoint = tonic::transport::Endpoint::from_shared(server.to_owned())
            .map_err(|e| Failure::usage(format!("--server {server}: {e}")))?
            .connect_timeout(std::time::Duration::from_secs(5));
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| unreachable(root_cause(&e)))?;
        Ok(Client {
            inner: SluiceClient::new(channel),
            token,
            server: server.to_owned(),
        })
    }

    pub(super) fn request<T>(&self, message: T) -> CliResult<tonic::Request<T>> {
        let mut request = tonic::Request::new(message);
        let token = self.token.as_deref().ok_or_else(|| Failure {
            code: 3,
            message: "no token: pass --token or set SLUICE_TOKEN (an administrator makes one with `sluice token new`)".into(),
            api_code: Some("unauthenticated"),
        })?;
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| Failure::usage("the token holds characters a header cannot carry"))?;
        request.metadata_mut().insert("authorization", value);
        Ok(request)
    }

    pub(super) fn failed(&self, status: tonic::Status) -> Failure {
        use tonic::Code;
        // The REST API's code for what the gRPC status says (src/api/grpc.rs maps them once).
        let api_code = match status.code() {
            Code::Unauthenticated => "unauthenticated",
            Code::PermissionDenied => "forbidden",
            Code::NotFound => "not_found",
            Code::InvalidArgument => "invalid",
            Code::FailedPrecondition | Code::AlreadyExists | Code::Aborted => "conflict",
            Code::Unavailable | Code::DeadlineExceeded => "unavailable",
            Code::ResourceExhausted => "unavailable",
            _ => "internal",
        };
        let mut failure = self.failed_as(&status);
        failure.api_code = Some(api_code);
        failure
    }

    fn failed_as(&self, status: &tonic::Status) -> Failure {
        use tonic::Code;
        match status.code() {
            Code::Unauthenticated | Code::PermissionDenied => Failure {
                code: 3,
                message: format!("not authorized: {}", status.message()),
                api_code: None,
            },
            Code::Unavailable => Failure {
                code: 3,
                message: format!(
                    "cannot reach sluice at {} ({}); start it with \"sluice server\" or set SLUICE_ADDR",
                    self.server,
                    status.message()
                ),
                api_code: None,
            },
            // An HTTP server that is not gRPC answered (Sluice's REST port answers JSON,
            // whose `{` tonic reads as a compression flag of 123).
            _ if status.message().contains("invalid compression flag")
                || status.message().contains("invalid content-type") =>
            {
                Failure {
                    code: 3,
                    message: format!(
                        "cannot talk to sluice at {}: an HTTP server answered, not gRPC ({}); this looks like Sluice's REST port: the CLI speaks gRPC, on port 50051 by default (server.grpc_addr); set --server or SLUICE_ADDR to it",
                        self.server,
                        status.message()
                    ),
                    api_code: None,
                }
            }
            _ => Failure::operation(status.message().to_owned()),
        }
    }
}

pub(super) fn root_cause(e: &dyn std::error::Error) -> String {
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    let text = cause.to_string();
    // "Connection refused (os error 111)" reads better as "connection refused".
    match text.split(" (os error").next() {
        Some(short) if !short.is_empty() => short.to_ascii_lowercase(),
        _ => text,
    }
}
