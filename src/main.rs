//! The `smarthomed` command line: the binary's edge, where errors become messages and
//! exit codes. Everything else lives in the library.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing_subscriber::EnvFilter;

use smarthomed::child_context::ChildContext;
use smarthomed::config::{Config, SecretEnv};
use smarthomed::{broker, processor, supervisor, syncer};

/// Exit code for a config that cannot be used (systemd: RestartPreventExitStatus).
const EXIT_CONFIG: u8 = 2;

#[derive(Parser)]
#[command(
    version,
    about = "Self-hosted smart-home backend: embedded MQTT broker, command processor and syncer under one supervisor"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the daemon: the supervisor and its broker, processor and syncer children.
    Run(ConfigArg),
    /// Run only the embedded MQTT broker in the foreground (what the supervisor starts).
    Broker(ConfigArg),
    /// Run only the command processor in the foreground (what the supervisor starts).
    Processor(ConfigArg),
    /// Run only the syncer in the foreground (what the supervisor starts).
    Syncer(ConfigArg),
    /// Validate a config and print the effective one, secrets redacted.
    CheckConfig(ConfigArg),
    /// Show the running daemon: its processes, the broker's clients, the newest alarms
    /// and the schedules due next.
    Status(ConfigArg),
    /// Read a password from standard input and print its hash for [[broker.users]].
    HashPassword,
    /// Check or reset the embedded store (store.dir).
    #[command(subcommand)]
    Store(StoreCommand),
    /// Add, change or remove a broker account ([[broker.users]]) in the config file.
    #[command(subcommand)]
    User(UserCommand),
    /// Run a simulated robot against the daemon's broker (protocol/README.md, "Robots").
    RobotSim(RobotSimArgs),
}

#[derive(Args)]
struct RobotSimArgs {
    /// The robot's id: [A-Za-z0-9_.:-]{1,64}.
    #[arg(long)]
    id: String,
    /// vacuum, serving or mobile.
    #[arg(long, value_parser = parse_kind)]
    kind: smarthomed::protocol::robot::Kind,
    /// How long each piece of work takes.
    #[arg(long, default_value_t = 5000)]
    work_ms: u64,
    #[arg(long, default_value_t = smarthomed::protocol::robot::DEFAULT_HEARTBEAT_SECS)]
    heartbeat_secs: u32,
    /// Take commands but never act on them (to see what a robot that does not answer
    /// gets).
    #[arg(long)]
    ignore_commands: bool,
    /// Report an e-stop as not clearable, as with its button still pressed.
    #[arg(long)]
    stop_not_clearable: bool,
    /// Broker account; its password comes from SMARTHOMED_ROBOT_PASSWORD.
    #[arg(long)]
    username: Option<String>,
    #[command(flatten)]
    config: ConfigArg,
}

fn parse_kind(text: &str) -> Result<smarthomed::protocol::robot::Kind, String> {
    serde_json::from_value(serde_json::Value::String(text.to_owned()))
        .map_err(|_| format!("{text:?} is not vacuum, serving or mobile"))
}

#[derive(Subcommand)]
enum UserCommand {
    /// Add an account; the password is asked for twice (or read from standard input).
    Add(UserArg),
    /// Set a new password for an account.
    Passwd(UserArg),
    /// Remove an account.
    Remove(UserArg),
}

#[derive(Args)]
struct UserArg {
    /// The account's user name.
    name: String,
    #[command(flatten)]
    config: ConfigArg,
}

#[derive(Subcommand)]
enum StoreCommand {
    /// Verify every file of the embedded store: present if it was ever created, of this
    /// version's format, and intact.
    Check(ConfigArg),
    /// Start afresh: move the store's files aside (as <file>.replaced-<time>), so the
    /// next start creates them empty. Refused while the daemon runs.
    Reset(ConfigArg),
    /// Write a consistent copy of the store into a new directory; works while the
    /// daemon runs.
    Backup(StoreDirArg),
    /// Put a backup in place of the store (current files are moved aside as by reset).
    /// Refused while the daemon runs.
    Restore(StoreDirArg),
}

#[derive(Args)]
struct StoreDirArg {
    /// The backup directory.
    dir: PathBuf,
    #[command(flatten)]
    config: ConfigArg,
}

#[derive(Args)]
struct ConfigArg {
    /// TOML config file; without one every setting takes its default.
    #[arg(short, long, env = "SMARTHOMED_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
}

impl ConfigArg {
    fn load(&self) -> Result<Config, smarthomed::config::ConfigError> {
        let mut config = Config::load(self.config.as_deref())?;
        config.resolve_secrets(&SecretEnv::from_process())?;
        Ok(config)
    }
}

fn main() -> ExitCode {
    smarthomed::memory::tune_allocator();
    let cli = Cli::parse();
    init_logging();
    smarthomed::panic_exit::install();
    smarthomed::tls::use_ring();
    let args = match &cli.command {
        Command::HashPassword => return report(hash_password()),
        Command::User(command) => return report(user_command(command)),
        Command::Run(args)
        | Command::Broker(args)
        | Command::Processor(args)
        | Command::Syncer(args)
        | Command::CheckConfig(args)
        | Command::Status(args)
        | Command::Store(StoreCommand::Check(args) | StoreCommand::Reset(args)) => args,
        Command::Store(StoreCommand::Backup(args) | StoreCommand::Restore(args)) => &args.config,
        Command::RobotSim(args) => &args.config,
    };
    let config_path = args.config.clone();
    let config = match args.load() {
        Ok(config) => config,
        Err(err) => {
            if is_child() {
                tracing::error!("{err}");
            } else {
                let _ = writeln!(LossyStderr, "error: {err}");
            }
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match cli.command {
        Command::CheckConfig(_) => {
            if let Err(err) = supervisor::check_named_files(&config) {
                let _ = writeln!(LossyStderr, "error: {err}");
                return ExitCode::from(EXIT_CONFIG);
            }
            print!("{}", config.to_redacted_toml());
            ExitCode::SUCCESS
        }
        Command::Run(args) => match current_thread().map(|rt| rt.block_on(supervisor::run(config, args.config))) {
            Ok(Ok(code)) => code,
            Ok(Err(
                err @ (supervisor::SupervisorError::MetricsListen { .. } | supervisor::SupervisorError::Status(_)),
            )) => {
                let _ = writeln!(LossyStderr, "error: {err}");
                ExitCode::from(EXIT_CONFIG)
            }
            Ok(Err(err)) => report(Err(err.into())),
            Err(err) => report(Err(err)),
        },
        Command::Broker(_) => report(multi_thread().and_then(|rt| {
            let outcome = rt.block_on(as_child(config, config_path, |context, shutdown| async move {
                broker::run(
                    &context.config.broker,
                    &context.config.store.dir,
                    context.reloads.clone(),
                    context.internal_password.clone(),
                    // Under the supervisor, the daemon's processor comes next.
                    is_child(),
                    shutdown,
                )
                .await
                .map_err(anyhow::Error::from)
            }));
            // The engine's storage keeps tasks of its own that never end; they have
            // written what they hold by now.
            rt.shutdown_timeout(std::time::Duration::from_millis(100));
            outcome
        })),
        Command::Processor(_) => report(multi_thread().and_then(|rt| {
            rt.block_on(as_child(config, config_path, |context, shutdown| async move {
                processor::run(context, shutdown).await.map_err(anyhow::Error::from)
            }))
        })),
        Command::Syncer(_) => report(multi_thread().and_then(|rt| {
            rt.block_on(as_child(config, config_path, |context, shutdown| async move {
                syncer::run(context, shutdown).await.map_err(anyhow::Error::from)
            }))
        })),
        Command::Store(command) => report(store_command(command, &config)),
        Command::Status(_) => report(current_thread().and_then(|rt| {
            let text = rt.block_on(smarthomed::status_command::report(&config, chrono::Utc::now()))?;
            print!("{text}");
            Ok(())
        })),
        Command::RobotSim(args) => report(current_thread().and_then(|rt| rt.block_on(robot_sim(args, &config)))),
        Command::HashPassword | Command::User(_) => unreachable!("handled before loading the config"),
    }
}

/// Runs a child's job until SIGTERM or SIGINT (also the parent-death signal); on SIGHUP
/// reads the config again and hands it to the job through its context.
async fn as_child<F, Fut>(config: Config, config_path: Option<PathBuf>, job: F) -> anyhow::Result<()>
where
    F: FnOnce(ChildContext, CancellationToken) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let tasks = TaskTracker::new();
    let shutdown = CancellationToken::new();
    let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    let mut hup = signal(SignalKind::hangup()).context("cannot listen for SIGHUP")?;
    // Always collected: the supervisor serves them when `[metrics] listen` is set, and
    // `smarthomed status` reads the broker's clients from them.
    let metrics = smarthomed::telemetry::install();
    let (reload, reloads) = tokio::sync::watch::channel(std::sync::Arc::new(config));
    let signalled = shutdown.clone();
    tasks.spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = hup.recv() => match (ConfigArg { config: config_path.clone() }).load() {
                    Ok(config) => {
                        tracing::info!("config reloaded");
                        reload.send_replace(std::sync::Arc::new(config));
                    }
                    Err(err) => tracing::warn!("config not reloaded, keeping the running one: {err}"),
                },
                () = signalled.cancelled() => return,
            }
        }
        tracing::info!("stopping");
        signalled.cancel();
    });
    // The control pipe outlives the job's own shutdown: alerts raised while it drains
    // still reach the supervisor, and heartbeats show it is still stopping, not hung.
    let job_done = CancellationToken::new();
    let context = ChildContext::from_env(reloads, metrics, &tasks, &job_done);
    let result = job(context, shutdown.clone()).await;
    job_done.cancel();
    shutdown.cancel();
    tasks.close();
    tasks.wait().await;
    result
}

async fn robot_sim(args: RobotSimArgs, config: &Config) -> anyhow::Result<()> {
    use smarthomed::protocol::robot;
    anyhow::ensure!(robot::valid_robot_id(&args.id), "--id must match [A-Za-z0-9_.:-]{{1,64}} and not be \"all\"");
    let mut options = smarthomed::mqtt::client_options(config, "robot-sim", None)?;
    options.set_client_id(robot::client_id(&args.id));
    if let Some(username) = &args.username {
        let password = std::env::var("SMARTHOMED_ROBOT_PASSWORD").unwrap_or_default();
        options.set_credentials(username.clone(), password);
    }
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    let sim = smarthomed::robot::sim::run(
        options,
        smarthomed::robot::sim::SimOptions {
            robot_id: args.id,
            kind: args.kind,
            work: std::time::Duration::from_millis(args.work_ms),
            heartbeat_secs: args.heartbeat_secs.max(1),
            ignore_commands: args.ignore_commands,
            stop_not_clearable: args.stop_not_clearable,
        },
        shutdown,
    );
    tokio::pin!(sim);
    tokio::select! {
        () = &mut sim => return Ok(()),
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    stop.cancel();
    sim.await;
    Ok(())
}

fn store_command(command: StoreCommand, config: &Config) -> anyhow::Result<()> {
    use smarthomed::store::embedded;
    anyhow::ensure!(
        config.store.backend == smarthomed::config::Backend::Embedded,
        "store.backend is \"firebase\": Firebase keeps its own data; these commands are for the embedded store"
    );
    let dir = &config.store.dir;
    match command {
        StoreCommand::Check(_) => {
            for file in embedded::check(dir)? {
                println!("ok: {} (format {})", file.display(), embedded::FORMAT);
            }
        }
        StoreCommand::Reset(_) => {
            let moved = embedded::reset(dir)?;
            if moved.is_empty() {
                println!("nothing to reset in {}", dir.display());
            }
            for path in moved {
                println!("moved aside: {}", path.display());
            }
        }
        StoreCommand::Backup(args) => {
            for path in embedded::backup(dir, &args.dir)? {
                println!("backed up: {}", path.display());
            }
        }
        StoreCommand::Restore(args) => {
            for path in embedded::restore(&args.dir, dir)? {
                println!("restored: {}", path.display());
            }
        }
    }
    Ok(())
}

fn user_command(command: &UserCommand) -> anyhow::Result<()> {
    use smarthomed::accounts_file::{Edit, edit_file};
    let (UserCommand::Add(args) | UserCommand::Passwd(args) | UserCommand::Remove(args)) = command;
    let path = args.config.config.as_deref().context("name the config file: -c FILE or SMARTHOMED_CONFIG")?;
    let name = args.name.as_str();
    let done = match command {
        UserCommand::Add(_) | UserCommand::Passwd(_) => {
            let password = read_new_password()?;
            let hash = smarthomed::password::hash(&password)?;
            if matches!(command, UserCommand::Add(_)) {
                edit_file(path, &Edit::Add { name, password_hash: &hash })?;
                "added"
            } else {
                edit_file(path, &Edit::SetPassword { name, password_hash: &hash })?;
                "changed the password of"
            }
        }
        UserCommand::Remove(_) => {
            edit_file(path, &Edit::Remove { name })?;
            "removed"
        }
    };
    println!("{done} {name} in {}; `systemctl reload smarthomed` (SIGHUP) applies it", path.display());
    Ok(())
}

/// A new password: asked for twice without echo on a terminal, else one line of input.
fn read_new_password() -> anyhow::Result<String> {
    if std::io::stdin().is_terminal() {
        let password = rpassword::prompt_password("new password: ").context("cannot read the password")?;
        let again = rpassword::prompt_password("again: ").context("cannot read the password")?;
        anyhow::ensure!(password == again, "the two passwords differ; nothing changed");
        return Ok(password);
    }
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).context("cannot read standard input")?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

fn hash_password() -> anyhow::Result<()> {
    if std::io::stdin().is_terminal() {
        eprintln!("password (input is shown; pipe it in to keep it off the screen):");
    }
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).context("cannot read standard input")?;
    let hash = smarthomed::password::hash(line.trim_end_matches(['\r', '\n']))?;
    println!("{hash}");
    Ok(())
}

fn current_thread() -> anyhow::Result<tokio::runtime::Runtime> {
    // The supervisor stays on the main thread: PR_SET_PDEATHSIG fires when the thread
    // that spawned a child exits, so children must be spawned from one that never does.
    tokio::runtime::Builder::new_current_thread().enable_all().build().context("cannot start the async runtime")
}

fn multi_thread() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if is_child() => {
            tracing::error!("{}", describe(&err));
            ExitCode::FAILURE
        }
        Err(err) => {
            let _ = writeln!(LossyStderr, "error: {}", describe(&err));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, each cause once: many of our errors already show their
/// cause in their own message, which `{:#}` would repeat.
fn describe(err: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in err.chain() {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&cause);
        }
    }
    text
}

/// Standard error that never fails. Once the supervisor is gone a child's stderr is a
/// broken pipe; a failed log write must not panic (as `eprintln!` does) and so cut
/// short the child's own shutdown.
struct LossyStderr;

impl Write for LossyStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

/// Whether this process is a child of the supervisor, which relays its log.
fn is_child() -> bool {
    std::env::var_os("SMARTHOMED_CHILD").is_some()
}

fn init_logging() {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,rmqtt=warn,sled=warn,rumqttc=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(|| LossyStderr);
    // A child writes one JSON object per event, which the supervisor re-logs at its
    // level and module, adding time and name: a newline in logged data (a schedule
    // title) stays inside its JSON string. journald stamps time itself.
    if is_child() {
        builder.json().flatten_event(false).with_current_span(false).with_span_list(false).without_time().init();
    } else if std::env::var_os("JOURNAL_STREAM").is_some() {
        let format = tracing_subscriber::fmt::format().without_time();
        builder.with_ansi(false).event_format(JournalPriority(format)).init();
    } else {
        builder.with_ansi(std::io::stderr().is_terminal()).init();
    }
}

/// Prefixes each line with its syslog priority (`<3>` error .. `<7>` debug), which
/// journald reads from a service's output, so that `journalctl -p warning` shows the
/// warnings and errors.
struct JournalPriority<F>(F);

impl<S, N, F> tracing_subscriber::fmt::FormatEvent<S, N> for JournalPriority<F>
where
    F: tracing_subscriber::fmt::FormatEvent<S, N>,
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        context: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let priority = match *event.metadata().level() {
            tracing::Level::ERROR => 3,
            tracing::Level::WARN => 4,
            tracing::Level::INFO => 6,
            tracing::Level::DEBUG | tracing::Level::TRACE => 7,
        };
        write!(writer, "<{priority}>")?;
        self.0.format_event(context, writer, event)
    }
}
