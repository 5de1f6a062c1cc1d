//! The one place D-Bus errors are named: every failure a method can return is one of these,
//! `org.vramd.Vramd1.Error.<Variant>`, so clients can match on a name rather than parse a
//! message (and never see a bare `org.freedesktop.DBus.Error.Failed`).

use crate::access::Denied;
use crate::arbiter::ArbiterError;

#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "org.vramd.Vramd1.Error")]
pub enum Error {
    /// Client side only: a transport or protocol error, or an error name this enum does not
    /// know. The interface never replies with it.
    #[zbus(error)]
    ZBus(zbus::Error),
    /// No model of that name is configured.
    UnknownModel(String),
    /// The model is loading or serving requests and cannot be unloaded now.
    Busy(String),
    /// The caller is neither root nor in `[daemon] control_group`.
    AccessDenied(String),
    /// An argument has a value the method does not take (an unload mode, a size).
    InvalidArgument(String),
    /// The model is `failed` until a `Load` retries it.
    ModelFailed(String),
    /// Its worker could not be started or died.
    WorkerFailed(String),
    /// Not enough GPU memory now; it may be later.
    InsufficientMemory(String),
    /// More than the whole memory budget: it never will fit.
    TooLarge(String),
    /// The daemon is stopping.
    Unavailable(String),
}

impl From<ArbiterError> for Error {
    fn from(e: ArbiterError) -> Self {
        let message = e.to_string();
        match e {
            ArbiterError::UnknownModel(_) => Error::UnknownModel(message),
            ArbiterError::InUse { .. } | ArbiterError::Busy { .. } => Error::Busy(message),
            ArbiterError::ModelFailed { .. } => Error::ModelFailed(message),
            ArbiterError::WorkerFailed { .. } => Error::WorkerFailed(message),
            ArbiterError::NoMemory { .. } => Error::InsufficientMemory(message),
            ArbiterError::TooLarge { .. } => Error::TooLarge(message),
            ArbiterError::Stopped => Error::Unavailable(message),
        }
    }
}

impl From<Denied> for Error {
    fn from(e: Denied) -> Self {
        Error::AccessDenied(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use zbus::DBusError;

    use super::*;

    #[test]
    fn arbiter_errors_have_typed_names() {
        let cases = [
            (ArbiterError::UnknownModel("x".into()), "UnknownModel"),
            (
                ArbiterError::InUse {
                    model: "x".into(),
                    reason: "loading".into(),
                },
                "Busy",
            ),
            (
                ArbiterError::NoMemory {
                    model: "x".into(),
                    reason: "r".into(),
                    retry_after: 5,
                },
                "InsufficientMemory",
            ),
            (ArbiterError::Stopped, "Unavailable"),
        ];
        for (e, name) in cases {
            let text = e.to_string();
            let d = Error::from(e);
            assert_eq!(d.name().as_str(), format!("org.vramd.Vramd1.Error.{name}"));
            assert_eq!(d.description(), Some(text.as_str()));
        }
        let denied = Error::from(Denied::Remote { group: "vramd".into() });
        assert_eq!(denied.name().as_str(), "org.vramd.Vramd1.Error.AccessDenied");
    }

    #[test]
    fn a_reply_error_converts_back_on_the_client() {
        let e = Error::InvalidArgument("mode must be soft or hard".into());
        let wire = zbus::Error::MethodError(
            e.name().to_owned().into(),
            e.description().map(str::to_owned),
            zbus::message::Message::method_call("/", "M")
                .unwrap()
                .build(&())
                .unwrap(),
        );
        assert!(matches!(Error::from(wire), Error::InvalidArgument(m) if m.contains("soft or hard")));
    }
}
