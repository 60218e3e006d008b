//! The daemon's processes, by the one name each goes by everywhere: its subcommand, its
//! MQTT client id (`smarthomed-<name>`), its availability topic
//! (`smarthomed/<name>/availability`), and the source of its logs and alerts.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Broker,
    Processor,
    Syncer,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Broker, Role::Processor, Role::Syncer];

    pub const fn name(self) -> &'static str {
        match self {
            Role::Broker => "broker",
            Role::Processor => "processor",
            Role::Syncer => "syncer",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
