//! smarthomed: a self-hosted smart-home backend in one binary.
//!
//! A [`supervisor`] process starts three children, each this same binary with a role:
//! the embedded MQTT [`broker`], the command [`processor`] and the [`syncer`]. MQTT is
//! the bus between them ([`mqtt`]); failures become [`alert`]s that the supervisor
//! delivers to Slack.

pub mod accounts_file;
pub mod alert;
pub mod backoff;
pub mod broker;
pub mod child_context;
pub mod config;
pub mod control;
pub mod log_limit;
pub mod memory;
pub mod mqtt;
pub mod outage;
pub mod panic_exit;
pub mod password;
pub mod processor;
pub mod protocol;
pub mod robot;
pub mod schedule;
pub mod status_command;
pub mod store;
pub mod supervisor;
pub mod syncer;
pub mod telemetry;
pub mod tls;
