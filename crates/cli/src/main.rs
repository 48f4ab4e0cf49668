//! The `distill` binary: the command line of [`distill_cli`].

fn main() {
    std::process::exit(distill_cli::main(std::env::args_os()));
}
