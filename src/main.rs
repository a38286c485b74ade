//! The `llmq-gpu` command: a thin layer over the library.

mod cli;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    // wgpu probes the GL backend too and logs EGL failures on headless
    // machines; those are noise unless the user asked for GL.
    let level = if args.verbose {
        "info,wgpu_hal::gles=off"
    } else {
        "warn,wgpu_hal::gles=off"
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level))
        .format_timestamp(None)
        .init();
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
