//! The `orgwarden` binary: a thin shell over the library's CLI.

fn main() -> std::process::ExitCode {
    orgwarden::cli::main()
}
