//! The integration tests: each module runs the real binary against real MQTT clients,
//! Mosquitto, the Cloud Firestore emulator and local stand-ins for the services that
//! cannot run here. One test binary, so the suite links once and starts one Firestore
//! emulator; helpers shared by the modules are in `common`.

mod common;

mod broker;
mod broker_access;
mod broker_conformance;
mod broker_durability;
mod cli;
mod external_broker;
mod firebase;
mod layers;
mod processor;
mod protocol_examples;
mod robots;
mod schedules;
mod store;
mod supervisor;
mod syncer;
