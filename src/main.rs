//! The `llmq-gpu` command: a thin layer over the library.

mod cli;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    // Mesa's Vulkan drivers probe for a Wayland display through libwayland,
    // which prints "XDG_RUNTIME_DIR is invalid" on headless machines. We
    // never open windows, so give it a harmless value before any thread starts.
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        std::env::set_var("XDG_RUNTIME_DIR", std::env::temp_dir());
    }
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
        Err(llmq_gpu::Error::Cancelled) => {
            eprintln!("stopped by a signal: nothing was written at the output path");
            ExitCode::from(cli::EXIT_INTERRUPTED)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
