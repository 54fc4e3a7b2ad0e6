//! The `latchkey` command: parse the command line and hand over to the library.

fn main() -> std::process::ExitCode {
    latchkey::cli::main()
}
