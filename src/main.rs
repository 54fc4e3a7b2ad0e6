//! The `latchkey` command: parse the command line and hand over to the library.

/// mimalloc, for the many small, short-lived allocations of a request (header values, the
/// request id). Its effect was not measured apart from the changes that came with it
/// (bench/README.md, "Second round").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    latchkey::cli::main()
}
