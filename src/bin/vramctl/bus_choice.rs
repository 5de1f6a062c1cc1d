//! Which bus `vramctl notify` follows vramd on: `--bus` when given, else `[dbus] bus` in
//! the daemon's configuration file, so that a per-user vramd (`bus = "session"`) and its
//! agent agree without a second setting. Pure: the file's text in, the bus out.
//!
//! Only `[dbus] bus` is read, not the whole configuration through `vramd::config`: the
//! daemon's parser also checks models, groups and paths, and a problem there is the
//! daemon's to report, not a reason for the agent to guess the wrong bus.

use std::path::Path;

use vramd::config::BusKind;

/// The bus, and what to say about how it was chosen (nothing when the file simply said so
/// or is absent).
pub fn from_config(path: &Path, read: std::io::Result<String>) -> (BusKind, Option<String>) {
    let shown = path.display();
    let text = match read {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (BusKind::System, None),
        Err(e) => {
            let why = format!("cannot read {shown} ({e}); following vramd on the system bus");
            return (BusKind::System, Some(why));
        }
    };
    match bus_in(&text) {
        Ok(bus) => (bus, None),
        Err(e) => (
            BusKind::System,
            Some(format!("{shown}: {e}; following vramd on the system bus")),
        ),
    }
}

/// `[dbus] bus` in a configuration file's text; the system bus when it is not set.
pub fn bus_in(text: &str) -> Result<BusKind, String> {
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| e.message().to_owned())?;
    match table.get("dbus").and_then(|d| d.get("bus")) {
        None => Ok(BusKind::System),
        Some(v) => v
            .clone()
            .try_into()
            .map_err(|e: toml::de::Error| format!("[dbus] bus: {}", e.message())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bus_comes_from_the_dbus_section() {
        assert_eq!(bus_in("[dbus]\nbus = \"session\"\n"), Ok(BusKind::Session));
        assert_eq!(bus_in("[dbus]\nbus = \"none\""), Ok(BusKind::None));
        assert_eq!(bus_in("[daemon]\nidle_exit = \"0\"\n[dbus]\n"), Ok(BusKind::System));
        assert_eq!(bus_in(""), Ok(BusKind::System));
        // Whatever else the file holds is the daemon's business.
        assert_eq!(
            bus_in("[[models]]\nname = \"../x\"\nunknown = 1\n[dbus]\nbus = \"session\""),
            Ok(BusKind::Session)
        );
        let e = bus_in("[dbus]\nbus = \"desktop\"").unwrap_err();
        assert!(e.starts_with("[dbus] bus: unknown variant `desktop`"), "{e}");
        assert!(bus_in("[dbus\n").is_err());
    }

    #[test]
    fn a_missing_or_unreadable_file_means_the_system_bus() {
        let p = Path::new("/etc/vramd/vramd.toml");
        let missing = std::io::Error::from(std::io::ErrorKind::NotFound);
        assert_eq!(from_config(p, Err(missing)), (BusKind::System, None));
        let denied = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let (bus, said) = from_config(p, Err(denied));
        assert_eq!(bus, BusKind::System);
        assert!(said.unwrap().starts_with("cannot read /etc/vramd/vramd.toml ("));
        let (bus, said) = from_config(p, Ok("[dbus]\nbus = 3".into()));
        assert_eq!(bus, BusKind::System);
        assert!(said.unwrap().contains("following vramd on the system bus"));
        assert_eq!(
            from_config(p, Ok("[dbus]\nbus = \"session\"".into())),
            (BusKind::Session, None)
        );
    }
}
