//! The `mes-events` binary. Everything it does is in `cli` (arguments, commands, output, exit
//! codes), over the `mes_events` library.
//!
//! Nothing else lives here.

mod cli;

/// The relay allocates a few short-lived buffers per event (row, headers, payload, ack); glibc's
/// malloc spent about 40% of the relay's CPU on them, mimalloc a quarter of that.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    cli::main()
}
