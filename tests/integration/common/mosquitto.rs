//! A real Mosquitto broker (Debian package `mosquitto`) on a free loopback port, with
//! one account, for the tests of `broker.embedded = false`.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

pub const USER: &str = "smarthome";
pub const PASSWORD: &str = "mosquitto-test-password";

pub struct Mosquitto {
    pub port: u16,
    /// A second listener with TLS, when started with a certificate.
    pub tls_port: Option<u16>,
    tls_files: Option<(std::path::PathBuf, std::path::PathBuf)>,
    dir: TempDir,
    child: Option<Child>,
}

impl Mosquitto {
    pub async fn start() -> Self {
        Self::start_inner(None).await
    }

    /// As [`Mosquitto::start`], with a TLS listener too, serving `cert` and `key`.
    pub async fn start_with_tls(cert: &Path, key: &Path) -> Self {
        Self::start_inner(Some((cert.to_owned(), key.to_owned()))).await
    }

    async fn start_inner(tls_files: Option<(std::path::PathBuf, std::path::PathBuf)>) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let passwd = dir.path().join("passwd");
        let made = Command::new("mosquitto_passwd")
            .args(["-c", "-b"])
            .arg(&passwd)
            .args([USER, PASSWORD])
            .status()
            .unwrap_or_else(|err| panic!("{}", missing(&err.to_string())));
        assert!(made.success(), "mosquitto_passwd failed");
        let tls_port = tls_files.as_ref().map(|_| super::free_port());
        let mut broker = Self { port: super::free_port(), tls_port, tls_files, dir, child: None };
        broker.restart().await;
        broker
    }

    /// (Re)starts the broker on the same port.
    pub async fn restart(&mut self) {
        let config = self.dir.path().join("mosquitto.conf");
        let mut text = format!(
            "listener {} 127.0.0.1\nallow_anonymous false\npassword_file {}\npersistence false\nuser root\nlog_dest stderr\n",
            self.port,
            self.dir.path().join("passwd").display()
        );
        if let (Some(port), Some((cert, key))) = (self.tls_port, &self.tls_files) {
            text += &format!("listener {port} 127.0.0.1\ncertfile {}\nkeyfile {}\n", cert.display(), key.display());
        }
        std::fs::write(&config, text).expect("write mosquitto.conf");
        let log = std::fs::File::create(self.dir.path().join("mosquitto.log")).expect("log");
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|err| panic!("{}", missing(&err.to_string())));
        self.child = Some(child);
        let port = self.port;
        super::wait_for_async(Duration::from_secs(10), "mosquitto to accept", || async move {
            super::connect(port, "probe", Some((USER, PASSWORD))).await.ok()
        })
        .await;
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn log_path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.stop();
    }
}

fn missing(err: &str) -> String {
    format!(
        "cannot run mosquitto ({err}): install Debian's package with \
         `apt-get install mosquitto` (.ci/run does this)"
    )
}
