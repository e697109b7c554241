//! The integration tests: one crate, one module per capability, all against the real daemon
//! started on port 0 with real databases (see `harness`).

mod api_errors;
mod binary;
mod cli;
mod cli_approve;
mod cli_confirm;
mod cli_context;
mod cli_edges;
mod cli_json;
mod drift;
mod dry_run;
mod flow;
mod flow_property;
mod grpc;
mod harness;
mod interrupted;
mod locks;
mod metrics;
mod mysql;
mod notify;
mod openapi;
mod promise;
mod receivers;
mod restore;
mod rollback_test;
mod rules;
mod story;
mod tidy;
mod traces;
mod waits;
mod worker;
