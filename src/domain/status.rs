//! Text-backed lifecycle enums — [`CommandStatus`], [`DeliveryStatus`],
//! [`JobKind`] — with their database/wire spellings and a Postgres `text`
//! codec that parses each value once, when its row is decoded.

use std::fmt;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A command's lifecycle (`docs/reference.md`, "The status document").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CommandStatus {
    /// Stored in the outbox, not yet picked up.
    #[default]
    Accepted,
    /// A worker is calling (or retrying) the upstream.
    InProgress,
    /// The upstream answered 2xx.
    Succeeded,
    /// The upstream call ended without success.
    Failed,
}

impl CommandStatus {
    /// The database/wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            CommandStatus::Accepted => "accepted",
            CommandStatus::InProgress => "in_progress",
            CommandStatus::Succeeded => "succeeded",
            CommandStatus::Failed => "failed",
        }
    }

    /// Parses the database/wire spelling.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "accepted" => Some(CommandStatus::Accepted),
            "in_progress" => Some(CommandStatus::InProgress),
            "succeeded" => Some(CommandStatus::Succeeded),
            "failed" => Some(CommandStatus::Failed),
            _ => None,
        }
    }

    /// Whether the upstream call has ended.
    pub fn is_terminal(self) -> bool {
        matches!(self, CommandStatus::Succeeded | CommandStatus::Failed)
    }
}

impl fmt::Display for CommandStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A callback delivery's state: `pending | delivered | dead_lettered`
/// (`docs/reference.md`, "The status document").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// Not yet delivered; attempts may be scheduled.
    Pending,
    /// A 2xx answer was received.
    Delivered,
    /// Given up: schedule exhausted or the receiver answered 410 Gone.
    DeadLettered,
}

impl DeliveryStatus {
    /// The database/wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::DeadLettered => "dead_lettered",
        }
    }

    /// Parses the database/wire spelling.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(DeliveryStatus::Pending),
            "delivered" => Some(DeliveryStatus::Delivered),
            "dead_lettered" => Some(DeliveryStatus::DeadLettered),
            _ => None,
        }
    }
}

/// The kinds of outbox job (`jobs.kind`): one upstream call, or one webhook
/// delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum JobKind {
    /// Call the upstream for a command.
    #[default]
    Execute,
    /// Send a command's callback.
    Deliver,
}

impl JobKind {
    /// The stored name: `execute` or `deliver` (also the metrics label).
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Execute => "execute",
            JobKind::Deliver => "deliver",
        }
    }

    /// The kind of a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "execute" => Some(JobKind::Execute),
            "deliver" => Some(JobKind::Deliver),
            _ => None,
        }
    }
}

impl fmt::Display for JobKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Reads and writes a text-backed enum as Postgres `text`, parsed once when
/// the row is decoded (an unknown name fails that row's decode, naming it).
macro_rules! text_enum_codec {
    ($ty:ty, $what:literal) => {
        impl sqlx::Type<sqlx::Postgres> for $ty {
            fn type_info() -> sqlx::postgres::PgTypeInfo {
                <String as sqlx::Type<sqlx::Postgres>>::type_info()
            }

            fn compatible(ty: &sqlx::postgres::PgTypeInfo) -> bool {
                <String as sqlx::Type<sqlx::Postgres>>::compatible(ty)
            }
        }

        impl<'r> sqlx::Decode<'r, sqlx::Postgres> for $ty {
            fn decode(
                value: sqlx::postgres::PgValueRef<'r>,
            ) -> Result<Self, sqlx::error::BoxDynError> {
                let s = <&str as sqlx::Decode<sqlx::Postgres>>::decode(value)?;
                <$ty>::parse(s).ok_or_else(|| format!("unknown {} `{s}`", $what).into())
            }
        }
    };
}

text_enum_codec!(JobKind, "job kind");
text_enum_codec!(CommandStatus, "command status");
text_enum_codec!(DeliveryStatus, "delivery status");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip() {
        for s in [
            CommandStatus::Accepted,
            CommandStatus::InProgress,
            CommandStatus::Succeeded,
            CommandStatus::Failed,
        ] {
            assert_eq!(CommandStatus::parse(s.as_str()), Some(s));
        }
        for s in [
            DeliveryStatus::Pending,
            DeliveryStatus::Delivered,
            DeliveryStatus::DeadLettered,
        ] {
            assert_eq!(DeliveryStatus::parse(s.as_str()), Some(s));
        }
    }

    #[test]
    fn job_kinds_round_trip_and_unknown_names_are_refused() {
        for kind in [JobKind::Execute, JobKind::Deliver] {
            assert_eq!(JobKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(JobKind::parse("Execute"), None);
        assert_eq!(JobKind::parse(""), None);
    }
}
