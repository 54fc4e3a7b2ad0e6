//! The `latchkey` command: parse the command line and hand over to the library.

/// mimalloc: per-thread free lists make the many small, short-lived allocations of a request
/// (header values, the request id, the access line) about half as costly as glibc's malloc
/// (bench/README.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    latchkey::cli::main()
}
