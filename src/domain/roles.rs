//! Roles: from a token's `roles` claim, or a configured role list.

use serde::Deserialize;

/// A role from the token's `roles` claim (unknown role names there are
/// ignored), or from a configured role list (`integrations.NAME.operations.OP.roles`,
/// where an unknown name is a configuration error naming the key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum Role {
    /// Sends commands, reads its own commands, manages its own signing secret.
    Client,
    /// Everything, including dead letters and replay.
    Admin,
    /// Read-only access to every client's commands.
    Reader,
}

impl Role {
    /// Parses a role name as it appears in the `roles` claim.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "client" => Some(Role::Client),
            "admin" => Some(Role::Admin),
            "reader" => Some(Role::Reader),
            _ => None,
        }
    }

    /// The role's name in tokens and configuration.
    pub fn name(self) -> &'static str {
        match self {
            Role::Client => "client",
            Role::Admin => "admin",
            Role::Reader => "reader",
        }
    }
}

impl TryFrom<String> for Role {
    type Error = String;

    /// A configured role name.
    ///
    /// # Errors
    /// A sentence naming the unknown role and the known ones.
    fn try_from(name: String) -> Result<Role, String> {
        Role::parse(&name)
            .ok_or_else(|| format!("unknown role `{name}`; roles are client, reader and admin"))
    }
}
