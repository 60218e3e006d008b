//! A panic anywhere ends the process. A task that panicked would otherwise leave the
//! rest of its process running without it, half alive (a supervisor with no children,
//! a processor whose store panics on every access). The panic is logged first, so the
//! supervisor's alert about the exit shows it; a child is then restarted by the
//! supervisor, the supervisor by systemd.

/// Exit code after a panic (Rust's own for a panicked main thread).
pub const EXIT_PANIC: u8 = 101;

/// Installs the hook for the whole process.
pub fn install() {
    std::panic::set_hook(Box::new(|info| {
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|message| (*message).to_owned())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(no message)".to_owned());
        let location = info.location().map(|location| location.to_string()).unwrap_or_default();
        let thread = std::thread::current().name().unwrap_or("unnamed").to_owned();
        tracing::error!(location, thread, "panic: {message}; exiting");
        std::process::exit(EXIT_PANIC.into());
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHILD: &str = "SMARTHOMED_PANIC_EXIT_TEST_CHILD";

    /// Runs itself again as a child process that panics inside a task.
    #[test]
    fn a_panic_in_a_task_ends_the_process() {
        if std::env::var_os(CHILD).is_some() {
            tracing_subscriber::fmt().with_writer(std::io::stderr).init();
            install();
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let caught = runtime.block_on(async { tokio::spawn(async { panic!("boom in a task") }).await });
            // Only without the hook does the runtime catch the panic and carry on.
            std::process::exit(if caught.is_err() { 0 } else { 1 });
        }
        let output = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "panic_exit::tests::a_panic_in_a_task_ends_the_process", "--nocapture"])
            .env(CHILD, "1")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(EXIT_PANIC.into()), "{stderr}");
        assert!(stderr.contains("panic: boom in a task; exiting"), "{stderr}");
    }
}
