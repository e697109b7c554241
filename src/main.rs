//! The `sluice` binary: `sluice server` runs the daemon; every other command is a thin client
//! of it (see `sluice::cli`).

fn main() -> std::process::ExitCode {
    sluice::cli::main()
}
