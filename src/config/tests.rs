use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;

const FILE: &str = "/etc/vramd/vramd.toml";

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::assemble(parse_main(Path::new(FILE), text)?, vec![])
}

fn err(text: &str) -> ConfigError {
    parse(text).expect_err("config should be rejected")
}

#[test]
fn empty_file_gives_defaults() {
    assert_eq!(parse("").unwrap(), Config::defaults());
}

#[test]
fn contract_keys_parse() {
    let c = parse(
        r#"
[daemon]
socket = "/run/vramd/vramd.sock"
idle_exit = "5m"
[memory]
backend = "budget"
budget = "8GiB"
reserve = "512MiB"
[[models]]
name = "chat"
kind = "llm"
path = "/var/lib/vramd/models/chat.gguf"
[[models]]
name = "zimage"
kind = "image"
diffusion_model = "models/dit.gguf"
vae = "/m/vae.gguf"
llm = "/m/qwen.gguf"
"#,
    )
    .unwrap();
    assert_eq!(c.daemon.idle_exit.0, Some(Duration::from_secs(300)));
    assert_eq!(c.memory.backend, BackendKind::Budget);
    assert_eq!(c.memory.budget.0, 8 << 30);
    assert_eq!(c.memory.reserve.0, 512 << 20);
    assert_eq!(c.models.len(), 2);
    assert_eq!(c.models[0].kind, ModelKind::Llm);
    assert_eq!(
        c.models[0].source,
        ModelSource::File {
            path: "/var/lib/vramd/models/chat.gguf".into()
        }
    );
    assert_eq!(c.models[0].origin, format!("{FILE}:9"));
    let ModelSource::Components(comp) = &c.models[1].source else {
        panic!("components expected")
    };
    // Relative paths are anchored at the configuration file's folder.
    assert_eq!(
        comp.diffusion_model.as_deref(),
        Some(Path::new("/etc/vramd/models/dit.gguf"))
    );
    assert_eq!(comp.files().len(), 3);
}

#[test]
fn integer_sizes_and_never() {
    let c = parse("[daemon]\nidle_exit = \"0\"\n[memory]\nreserve = 0\nbudget = 1048576\n").unwrap();
    assert_eq!(c.daemon.idle_exit, crate::units::Timeout::NEVER);
    assert_eq!(c.memory.reserve.0, 0);
    assert_eq!(c.memory.budget.0, 1 << 20);
}

#[test]
fn unknown_key_is_an_error_with_its_line() {
    let e = err("[daemon]\nidle_exit = \"5m\"\n\n[memory]\nreserv = \"1GiB\"\n");
    assert_eq!(e.file, PathBuf::from(FILE));
    assert_eq!(e.at.map(|a| a.0), Some(5));
    assert!(e.message.contains("unknown field `reserv`"), "{e}");
    assert!(e.to_string().starts_with("/etc/vramd/vramd.toml:5:"), "{e}");
}

#[test]
fn unknown_section_is_an_error() {
    let e = err("[deamon]\nsocket = \"/x\"\n");
    assert!(e.message.contains("unknown field `deamon`"), "{e}");
    assert_eq!(e.at.map(|a| a.0), Some(1));
}

#[test]
fn bad_values_name_the_line_and_reason() {
    let e = err("[memory]\nbudget = \"8 gigs\"\n");
    assert_eq!(e.at.map(|a| a.0), Some(2));
    assert!(e.message.contains("unknown unit \"gigs\""), "{e}");

    let e = err("[daemon]\nidle_exit = \"soon\"\n");
    assert_eq!(e.at.map(|a| a.0), Some(2));
    assert!(e.message.contains("invalid duration \"soon\""), "{e}");

    let e = err("[daemon]\nidle_exit = 30\n");
    assert!(e.message.contains("has no unit"), "{e}");

    let e = err("[memory]\nbackend = \"cuda\"\n");
    assert!(e.message.contains("unknown variant `cuda`"), "{e}");

    let e = err("[memory]\nreserve = -5\n");
    assert!(e.message.contains("must not be negative"), "{e}");

    let e = err("[[models]]\nname = \"x\"\nkind = \"audio\"\npath = \"/m\"\n");
    assert!(e.message.contains("unknown variant `audio`"), "{e}");
}

#[test]
fn syntax_error_points_at_it() {
    let e = err("[daemon]\nsocket = \"/run/x.sock\n");
    assert_eq!(e.at.map(|a| a.0), Some(2));
}

#[test]
fn memory_consistency() {
    let e = err("[memory]\nbudget = \"1GiB\"\nreserve = \"2GiB\"\n");
    assert_eq!(e.at.map(|a| a.0), Some(3));
    assert!(e.message.contains("must be smaller than the budget"), "{e}");
    let e = err("[memory]\nbudget = 0\nreserve = 0\n");
    assert!(e.message.contains("greater than 0"), "{e}");
    let e = err("[daemon]\nmax_body = 10\n");
    assert!(e.message.contains("at least 1KiB"), "{e}");
}

#[test]
fn model_shape_rules() {
    let e = err("[daemon]\n\n[[models]]\nname = \"chat\"\nkind = \"llm\"\n");
    assert_eq!(e.at.map(|a| a.0), Some(3));
    assert!(e.message.contains("needs a `path`"), "{e}");

    let e = err("[[models]]\nname = \"chat\"\nkind = \"llm\"\npath = \"/a\"\nvae = \"/b\"\n");
    assert!(e.message.contains("an llm model takes only `path`"), "{e}");

    let e = err("[[models]]\nname = \"img\"\nkind = \"image\"\npath = \"/a\"\nvae = \"/b\"\n");
    assert!(e.message.contains("not both"), "{e}");

    let e = err("[[models]]\nname = \"img\"\nkind = \"image\"\nvae = \"/b\"\n");
    assert!(e.message.contains("need `diffusion_model`"), "{e}");

    let e = err("[[models]]\nname = \"../etc\"\nkind = \"llm\"\npath = \"/a\"\n");
    assert!(e.message.contains("must be 1 to 64 characters"), "{e}");

    let e = err("[[models]]\nkind = \"llm\"\npath = \"/a\"\n");
    assert!(e.message.contains("missing field `name`"), "{e}");
}

#[test]
fn parallel_slots_are_checked_and_named() {
    let llm = "[[models]]\nname = \"chat\"\nkind = \"llm\"\npath = \"/a\"\n";
    for bad in ["0", "65", "1000"] {
        let e = err(&format!("{llm}parallel = {bad}\n"));
        assert!(e.message.contains("`parallel` must be from 1 to 64"), "{bad}: {e}");
        assert!(e.message.contains(bad), "{e}");
        assert_eq!(e.at.map(|a| a.0), Some(1), "{e}");
    }
    // A value of the wrong type is TOML's error, at the key's own line.
    for bad in ["-1", "\"two\"", "2.5"] {
        let e = err(&format!("{llm}parallel = {bad}\n"));
        assert_eq!(e.at.map(|a| a.0), Some(5), "{bad}: {e}");
        assert!(e.message.contains("expected u32"), "{bad}: {e}");
    }
    let e = err(&format!("{llm}embeddings = true\nparallel = 4\n"));
    assert!(e.message.contains("`parallel` must be 1 for an embedding model"), "{e}");
    let e = err("[[models]]\nname = \"img\"\nkind = \"image\"\npath = \"/a\"\nparallel = 2\n");
    assert!(e.message.contains("`parallel` applies to llm models only"), "{e}");

    let slots = |extra: &str| {
        let c = parse(&format!("{llm}{extra}")).unwrap();
        c.models[0].llm_options.as_ref().unwrap().parallel
    };
    assert_eq!(slots(""), crate::config::DEFAULT_PARALLEL);
    assert_eq!(slots("parallel = 8\n"), 8);
    assert_eq!(slots("embeddings = true\n"), 1, "an embedding model has one slot");
}

#[test]
fn dropins_add_models_and_names_stay_unique() {
    let main = parse_main(
        Path::new(FILE),
        "[[models]]\nname = \"chat\"\nkind = \"llm\"\npath = \"/a\"\n",
    )
    .unwrap();
    let d1 = Path::new("/etc/vramd/models.d/10-image.toml");
    let dropin = parse_dropin(d1, "[[models]]\nname = \"img\"\nkind = \"image\"\npath = \"sd.gguf\"\n").unwrap();
    let c = Config::assemble(main, vec![dropin]).unwrap();
    assert_eq!(c.models.len(), 2);
    assert_eq!(
        c.model("img").unwrap().source,
        ModelSource::File {
            path: "/etc/vramd/models.d/sd.gguf".into()
        }
    );

    let main = parse_main(
        Path::new(FILE),
        "[[models]]\nname = \"chat\"\nkind = \"llm\"\npath = \"/a\"\n",
    )
    .unwrap();
    let dup = parse_dropin(d1, "\n[[models]]\nname = \"chat\"\nkind = \"llm\"\npath = \"/b\"\n").unwrap();
    let e = Config::assemble(main, vec![dup]).unwrap_err();
    assert_eq!(e.file, d1);
    assert_eq!(e.at.map(|a| a.0), Some(2));
    assert!(
        e.message.contains("defined twice (first at /etc/vramd/vramd.toml:1)"),
        "{e}"
    );
}

#[test]
fn dropins_hold_only_models() {
    let e = parse_dropin(Path::new("/d/x.toml"), "[memory]\nbudget = \"1GiB\"\n").unwrap_err();
    assert!(e.message.contains("unknown field `memory`"), "{e}");
}

#[test]
fn printed_config_parses_back_to_itself() {
    let c = parse(
        "[daemon]\nidle_exit = \"1h30m\"\nmax_body = \"1MiB\"\ncontrol_group = \"gpu\"\ndefault_image_model = \"img\"\n[dbus]\nbus = \"session\"\n[memory]\nbudget = \"1.5GiB\"\nreserve = 1000\n\
         [[models]]\nname = \"chat\"\nkind = \"llm\"\npath = \"/a.gguf\"\n\
         [[models]]\nname = \"img\"\nkind = \"image\"\ndiffusion_model = \"/d\"\nt5xxl = \"/t\"\n",
    )
    .unwrap();
    let printed = c.to_toml();
    let mut again = parse(&printed).unwrap();
    // Origins are where a model was read from, which the printed copy changes.
    for (a, b) in again.models.iter_mut().zip(&c.models) {
        a.origin = b.origin.clone();
    }
    assert_eq!(again, c, "printed:\n{printed}");
}

#[test]
fn dbus_bus_and_control_group() {
    let c = parse("").unwrap();
    assert_eq!(c.dbus.bus, BusKind::System);
    assert_eq!(c.daemon.control_group, "vramd");

    let c = parse("[daemon]\ncontrol_group = \"gpu-admins\"\n[dbus]\nbus = \"session\"\n").unwrap();
    assert_eq!(c.dbus.bus, BusKind::Session);
    assert_eq!(c.daemon.control_group, "gpu-admins");
    assert_eq!(parse("[dbus]\nbus = \"none\"\n").unwrap().dbus.bus, BusKind::None);

    let e = err("[dbus]\nbus = \"user\"\n");
    assert_eq!(e.at.map(|a| a.0), Some(2));
    assert!(e.message.contains("unknown variant `user`"), "{e}");

    let e = err("[dbus]\nname = \"org.example\"\n");
    assert!(e.message.contains("unknown field `name`"), "{e}");

    let e = err("[daemon]\n\ncontrol_group = \"wheel users\"\n");
    assert_eq!(e.at.map(|a| a.0), Some(3));
    assert!(e.message.contains("not a valid group name"), "{e}");
    let e = err("[daemon]\ncontrol_group = \"\"\n");
    assert!(e.message.contains("not a valid group name"), "{e}");
}

#[test]
fn default_image_model_names_a_configured_image_model() {
    let models = "[[models]]\nname = \"chat\"\nkind = \"llm\"\npath = \"/a\"\n\
                  [[models]]\nname = \"a\"\nkind = \"image\"\npath = \"/a.gguf\"\n\
                  [[models]]\nname = \"b\"\nkind = \"image\"\npath = \"/b.gguf\"\n";
    // Unset: the first image model.
    let c = parse(models).unwrap();
    assert_eq!(c.default_image_model().unwrap().name, "a");
    let c = parse(&format!("[daemon]\ndefault_image_model = \"b\"\n{models}")).unwrap();
    assert_eq!(c.default_image_model().unwrap().name, "b");
    // An LLM, or a name that is not configured, is an error at its line.
    for bad in ["chat", "nope"] {
        let e = err(&format!("[daemon]\n\ndefault_image_model = \"{bad}\"\n{models}"));
        assert_eq!(e.at.map(|a| a.0), Some(3), "{e}");
        assert!(
            e.message.contains("not a configured image model (image models: a, b)"),
            "{e}"
        );
    }
    // A model from a drop-in counts.
    let main = parse_main(Path::new(FILE), "[daemon]\ndefault_image_model = \"img\"\n").unwrap();
    let d = parse_dropin(
        Path::new("/d/x.toml"),
        "[[models]]\nname = \"img\"\nkind = \"image\"\npath = \"/i\"\n",
    )
    .unwrap();
    assert_eq!(
        Config::assemble(main, vec![d])
            .unwrap()
            .default_image_model()
            .unwrap()
            .name,
        "img"
    );
}
