//! The real Cloud Firestore emulator (Debian package google-cloud-cli-firestore-emulator,
//! the one `gcloud emulators firestore start` runs), started once per test binary on a
//! free loopback port. Each test takes its own project id, so tests share the emulator
//! without sharing data.
//!
//! The emulator's Java process is started directly, not through `gcloud`'s wrappers, so
//! that it is our child and dies with the test binary (PR_SET_PDEATHSIG), however the
//! binary ends: Rust's test harness has no hook at exit.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

const INSTALL_HINT: &str = "the Cloud Firestore emulator is needed by these tests: install the Debian packages \
google-cloud-cli-firestore-emulator (from Google's Cloud SDK apt repository, \
https://cloud.google.com/sdk/docs/install#deb) and default-jre-headless; scripts/test installs them when apt can";
const JAR_IN_SDK: &str = "platform/cloud-firestore-emulator/cloud-firestore-emulator.jar";
const READY_LINE: &str = "Dev App Server is now running";
const START_TIMEOUT: Duration = Duration::from_secs(90);

/// `host:port` of the shared emulator, started on first use.
pub fn host() -> &'static str {
    static EMULATOR: OnceLock<Result<String, String>> = OnceLock::new();
    match EMULATOR.get_or_init(start) {
        Ok(host) => host,
        Err(why) => panic!("{why}"),
    }
}

/// A project id no other test uses: the emulator keeps each project's data apart.
pub fn project() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!("smarthomed-test-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

fn jar() -> Result<PathBuf, String> {
    let sdk_roots = std::env::var_os("SMARTHOMED_GCLOUD_SDK_ROOT")
        .map(PathBuf::from)
        .into_iter()
        .chain(
            Command::new("gcloud")
                .args(["info", "--format=value(installation.sdk_root)"])
                .output()
                .ok()
                .filter(|output| output.status.success())
                .map(|output| PathBuf::from(String::from_utf8_lossy(&output.stdout).trim())),
        )
        .chain([PathBuf::from("/usr/lib/google-cloud-sdk")]);
    for root in sdk_roots {
        let jar = root.join(JAR_IN_SDK);
        if jar.is_file() {
            return Ok(jar);
        }
    }
    Err(format!("{JAR_IN_SDK} not found under the Cloud SDK: {INSTALL_HINT}"))
}

fn start() -> Result<String, String> {
    let jar = jar()?;
    let port = super::free_port();
    let host = format!("127.0.0.1:{port}");
    let (ready_sender, ready) = std::sync::mpsc::channel();
    // The thread that forks is the emulator's parent for PR_SET_PDEATHSIG: it must live as
    // long as the test binary, so it is a thread of its own, which then relays the output.
    std::thread::Builder::new()
        .name("firestore-emulator".into())
        .spawn(move || {
            let mut command = Command::new("java");
            command
                .args(["-Duser.language=en", "-Xmx512m", "-cp"])
                .arg(&jar)
                .args(["com.google.cloud.datastore.emulator.firestore.CloudFirestore", "start", "--host=127.0.0.1"])
                .arg(format!("--port={port}"))
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null());
            // SAFETY: prctl is async-signal-safe.
            #[allow(unsafe_code)]
            unsafe {
                command.pre_exec(|| {
                    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL).map_err(std::io::Error::from)
                });
            }
            let mut child = match command.spawn() {
                Ok(child) => child,
                Err(err) => {
                    let _ = ready_sender.send(Err(format!("cannot run java ({err}): {INSTALL_HINT}")));
                    return;
                }
            };
            let Some(stdout) = child.stdout.take() else { return };
            let mut ready_sender = Some(ready_sender);
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.contains(READY_LINE)
                    && let Some(sender) = ready_sender.take()
                {
                    let _ = sender.send(Ok(()));
                }
            }
            let status = child.wait();
            if let Some(sender) = ready_sender.take() {
                let _ = sender.send(Err(format!("the Firestore emulator exited at start ({status:?})")));
            }
        })
        .map_err(|err| err.to_string())?;
    match ready.recv_timeout(START_TIMEOUT) {
        Ok(Ok(())) => Ok(host),
        Ok(Err(why)) => Err(why),
        Err(_) => Err(format!("the Firestore emulator did not start within {START_TIMEOUT:?}")),
    }
}
