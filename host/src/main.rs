//! The `wattedge` binary: everything lives in the library; see `wattedge::cli`.

fn main() -> std::process::ExitCode {
    wattedge::cli::main()
}
