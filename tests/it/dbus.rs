//! The D-Bus interface through a private `dbus-daemon` (see `dbus_util`): the served
//! introspection against `dbus/org.vramd.Vramd1.xml`, every method and property through a
//! `zbus` proxy and through `busctl`, the signals, access control with a caller of another
//! uid, and D-Bus failures that must not stop the HTTP API.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Value};
use vramd::dbus::proxy::Vramd1Proxy;
use vramd::dbus::Error;

use crate::dbus_util::{open_dir, runtime, two_models, PrivateBus, GIB, NAME, PATH};
use crate::util::ok;
use crate::util::{Daemon, BASE_CONFIG};

const IFACE: &str = "org.vramd.Vramd1";

async fn proxy(bus: &PrivateBus) -> Vramd1Proxy<'static> {
    Vramd1Proxy::new(&bus.connect().await).await.unwrap()
}

/// Waits for the next item of a signal stream.
async fn next<S: futures_util::Stream + Unpin>(stream: &mut S) -> S::Item {
    tokio::time::timeout(Duration::from_secs(20), stream.next())
        .await
        .expect("no signal within 20 s")
        .expect("signal stream ended")
}

/// The `<interface name="org.vramd.Vramd1">` element, comments included, one trimmed line each.
fn interface_block(xml: &str) -> Vec<String> {
    let start = xml
        .find(&format!("<interface name=\"{IFACE}\">"))
        .expect("interface element");
    let end = start + xml[start..].find("</interface>").expect("interface end");
    xml[start..end].lines().map(|l| l.trim().to_owned()).collect()
}

#[test]
fn introspection_matches_the_checked_in_xml() {
    let bus = PrivateBus::start();
    let _d = bus.daemon(BASE_CONFIG);
    let served = runtime().block_on(async {
        let conn = bus.connect().await;
        let intro = zbus::fdo::IntrospectableProxy::builder(&conn)
            .destination(NAME)
            .unwrap()
            .path(PATH)
            .unwrap()
            .build()
            .await
            .unwrap();
        intro.introspect().await.unwrap()
    });
    let file = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/dbus/org.vramd.Vramd1.xml")).unwrap();
    // Structure: the same methods, arguments, signals, properties and annotations.
    let parse = |xml: &str| {
        let node = zbus_xml::Node::from_reader(xml.as_bytes()).unwrap();
        node.interfaces()
            .iter()
            .find(|i| i.name() == IFACE)
            .cloned()
            .expect("the interface")
    };
    assert_eq!(parse(&file), parse(&served));
    // And the doc comments, which the daemon serves from its code's doc comments.
    assert_eq!(
        interface_block(&file),
        interface_block(&served),
        "dbus/org.vramd.Vramd1.xml differs from what vramd serves:\n{served}"
    );
    assert!(file.contains("org.vramd.Vramd1.Error.AccessDenied"));
}

#[test]
fn every_method_and_property_through_a_zbus_proxy() {
    let bus = PrivateBus::start();
    let (config, _keep) = two_models("");
    let d = bus.daemon(&config);
    runtime().block_on(async {
        let p = proxy(&bus).await;
        assert_eq!(p.version().await.unwrap(), env!("CARGO_PKG_VERSION"));
        assert_eq!(p.backend().await.unwrap(), "budget");
        assert_eq!(p.total_bytes().await.unwrap(), 3 * GIB);
        assert_eq!(p.reserved_bytes().await.unwrap(), 0);
        assert_eq!(p.free_bytes().await.unwrap(), 3 * GIB);
        assert_eq!(
            p.list_models().await.unwrap(),
            [
                ("chat".into(), "llm".into(), "unloaded".into(), 0, 0, -1),
                ("sd".into(), "image".into(), "unloaded".into(), 0, 0, -1),
            ]
        );
        let status: Value = serde_json::from_str(&p.status().await.unwrap()).unwrap();
        assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(status["models"][1]["name"], "sd");

        let http = ok(d.get("/v1/estimate?model=sd&width=1024&height=768"));
        assert_eq!(
            p.estimate("sd", 1024, 768).await.unwrap(),
            http["total"].as_u64().unwrap()
        );
        let http = ok(d.get("/v1/estimate?model=chat"));
        assert_eq!(p.estimate("chat", 0, 0).await.unwrap(), http["total"].as_u64().unwrap());

        // FreeBytes changes are announced.
        let mut free = p.receive_free_bytes_changed().await;
        let _initial = next(&mut free).await; // the proxy's first value, from its cache fill
        p.load("chat").await.unwrap();
        // While it loads, what the load is expected to take is reserved (1.5 GiB, the file
        // size: the fake model is not a GGUF); then the worker's report (2 GiB) counts.
        let mut announced = Vec::new();
        while announced.last() != Some(&GIB) && announced.len() < 3 {
            announced.push(next(&mut free).await.get().await.unwrap());
        }
        assert_eq!(announced.last(), Some(&GIB), "3 GiB minus chat's 2 GiB: {announced:?}");
        let rows = p.list_models().await.unwrap();
        assert_eq!(rows[0].2, "loaded");
        assert_eq!(rows[0].3, 2 * GIB);
        assert_eq!(rows[0].4, 2 * GIB);

        p.set_pinned("chat", true).await.unwrap();
        assert_eq!(d.model_status("chat")["pinned"], true);
        p.set_pinned("chat", false).await.unwrap();
        assert_eq!(d.model_status("chat")["pinned"], false);
        p.unload("chat", "hard").await.unwrap();
        assert_eq!(d.model_status("chat")["state"], "unloaded");
        assert!(p.list_models().await.unwrap()[0].5 >= -1);

        // Typed errors.
        assert!(matches!(p.load("nope").await, Err(Error::UnknownModel(m)) if m.contains("\"nope\"")));
        assert!(matches!(
            p.unload("chat", "gentle").await,
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(p.estimate("sd", 512, 0).await, Err(Error::InvalidArgument(_))));
        assert!(matches!(p.estimate("nope", 0, 0).await, Err(Error::UnknownModel(_))));
        assert!(matches!(p.set_pinned("nope", true).await, Err(Error::UnknownModel(_))));
    });
}

#[test]
fn a_model_serving_a_request_is_busy_for_an_unload() {
    let bus = PrivateBus::start();
    let dir = tempfile::tempdir().unwrap();
    let workers = crate::util::fake_worker_dir();
    // A slow generation holds the model busy while D-Bus asks to unload it.
    let line = "ok delay_ms=50";
    let chat = crate::util::model_file(dir.path(), "chat", line, 1 << 20);
    let config = format!(
        "[daemon]\nidle_exit = \"0\"\nworker_dir = \"{}\"\n[memory]\nbackend = \"budget\"\n\
         [[models]]\nname = \"chat\"\nkind = \"llm\"\npath = \"{}\"\n",
        workers.path().display(),
        chat.display()
    );
    let d = bus.daemon(&config);
    let socket = d.socket.clone();
    let long = std::thread::spawn(move || {
        crate::util::http(
            &socket,
            "POST",
            "/v1/completions",
            &[("Content-Type", "application/json")],
            json!({"model": "chat", "prompt": "x", "max_tokens": 60})
                .to_string()
                .as_bytes(),
        )
    });
    d.wait_model("chat", Duration::from_secs(10), |m| m["in_flight"] == 1);
    runtime().block_on(async {
        let p = proxy(&bus).await;
        let r = p.unload("chat", "hard").await;
        assert!(matches!(r, Err(Error::Busy(_))), "{r:?}");
    });
    assert_eq!(long.join().unwrap().status, 200);
}

#[test]
fn every_method_and_property_through_busctl() {
    let bus = PrivateBus::start();
    let (config, _keep) = two_models("");
    let d = bus.daemon(&config);
    let run = |args: &[&str]| {
        let out = bus.busctl(args);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim().to_owned(),
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        )
    };
    let get = |prop: &str| run(&["get-property", NAME, PATH, IFACE, prop]).1;
    assert_eq!(get("Version"), format!("s \"{}\"", env!("CARGO_PKG_VERSION")));
    assert_eq!(get("Backend"), "s \"budget\"");
    assert_eq!(get("TotalBytes"), format!("t {}", 3 * GIB));
    assert_eq!(get("FreeBytes"), format!("t {}", 3 * GIB));
    assert_eq!(get("ReservedBytes"), "t 0");
    let call = |args: &[&str]| {
        let mut all = vec!["call", NAME, PATH, IFACE];
        all.extend_from_slice(args);
        run(&all)
    };
    assert_eq!(
        call(&["ListModels"]).1,
        "a(sssttx) 2 \"chat\" \"llm\" \"unloaded\" 0 0 -1 \"sd\" \"image\" \"unloaded\" 0 0 -1"
    );
    let (_, status, _) = call(&["Status"]);
    let json: Value = serde_json::from_str(&serde_json::from_str::<String>(status.trim_start_matches("s ")).unwrap())
        .expect("Status is JSON");
    assert_eq!(json["memory"]["total_bytes"], 3 * GIB);
    let http = ok(d.get("/v1/estimate?model=sd&width=512&height=512"));
    assert_eq!(
        call(&["Estimate", "suu", "sd", "512", "512"]).1,
        format!("t {}", http["total"])
    );
    assert_eq!(call(&["Load", "s", "chat"]), (true, String::new(), String::new()));
    assert_eq!(d.model_status("chat")["state"], "loaded");
    assert!(call(&["SetPinned", "sb", "chat", "true"]).0);
    assert_eq!(d.model_status("chat")["pinned"], true);
    assert!(call(&["SetPinned", "sb", "chat", "false"]).0);
    assert!(call(&["Unload", "ss", "chat", "soft"]).0);
    assert_eq!(d.model_status("chat")["state"], "soft_unloaded");
    assert!(call(&["Unload", "ss", "chat", "hard"]).0);
    assert_eq!(d.model_status("chat")["state"], "unloaded");
    let (ok_, _, err) = call(&["Unload", "ss", "chat", "sideways"]);
    assert!(!ok_ && err.contains("\"soft\" or \"hard\""), "{err}");
    let (ok_, _, err) = call(&["Load", "s", "nope"]);
    assert!(!ok_ && err.contains("model \"nope\" is not configured"), "{err}");
    // Introspection and the standard interfaces answer too.
    let (ok_, intro, _) = run(&["introspect", NAME, PATH, IFACE]);
    assert!(
        ok_ && intro.contains(".ListModels") && intro.contains(".VaeOffloaded"),
        "{intro}"
    );
    assert!(run(&["call", NAME, PATH, "org.freedesktop.DBus.Peer", "Ping"]).0);
}

#[test]
fn a_soft_unload_emits_model_unloaded_with_mode_soft() {
    let bus = PrivateBus::start();
    let (config, _keep) = two_models("");
    let _d = bus.daemon(&config);
    runtime().block_on(async {
        let p = proxy(&bus).await;
        let mut loaded = p.receive_model_loaded().await.unwrap();
        let mut unloaded = p.receive_model_unloaded().await.unwrap();
        p.load("chat").await.unwrap();
        let l = next(&mut loaded).await;
        let a = l.args().unwrap();
        assert_eq!((a.model.as_str(), a.bytes), ("chat", 2 * GIB));
        assert!(a.seconds >= 0.0 && a.seconds < 20.0);
        p.unload("chat", "soft").await.unwrap();
        let u = next(&mut unloaded).await;
        let a = u.args().unwrap();
        assert_eq!(
            (a.model.as_str(), a.mode.as_str(), a.reason.as_str(), a.freed_bytes),
            ("chat", "soft", "requested", GIB / 2)
        );
        assert_eq!(
            (
                a.cause.as_str(),
                a.for_model.as_str(),
                a.for_request.as_str(),
                a.needed_bytes
            ),
            ("requested", "", "", 0),
            "a person's unload made room for nobody"
        );
        assert_eq!(
            a.kept_bytes, 0,
            "the signal carries kept_bytes; the fake worker keeps no KV"
        );
        p.unload("chat", "hard").await.unwrap();
        let u = next(&mut unloaded).await;
        assert_eq!(u.args().unwrap().mode, "hard");
    });
}

#[test]
fn an_image_under_memory_pressure_emits_vae_offloaded() {
    let bus = PrivateBus::start();
    let (config, _keep) = two_models("");
    let d = bus.daemon(&config);
    runtime().block_on(async {
        let p = proxy(&bus).await;
        let mut vae = p.receive_vae_offloaded().await.unwrap();
        let mut unloaded = p.receive_model_unloaded().await.unwrap();
        let mut finished = p.receive_request_finished().await.unwrap();
        ok(d.post_json(
            "/v1/completions",
            &json!({"model": "chat", "prompt": "hi", "max_tokens": 2}).to_string(),
        ));
        let v = ok(d.post_json(
            "/v1/images/generations",
            &json!({"model": "sd", "prompt": "a cat", "size": "512x512", "steps": 2}).to_string(),
        ));
        assert_eq!(v["vramd"]["vae"], "tiled");
        let u = next(&mut unloaded).await;
        let a = u.args().unwrap();
        assert_eq!((a.model.as_str(), a.mode.as_str()), ("chat", "soft"));
        assert!(a.reason.contains("chat is idle"), "{}", a.reason);
        // The cause is structured: which request of which model needed how much.
        assert_eq!((a.cause.as_str(), a.for_model.as_str()), ("room", "sd"));
        assert!(!a.for_request.is_empty());
        assert!(a.needed_bytes > 0);
        let request = a.for_request.clone();
        let s = next(&mut vae).await;
        let a = s.args().unwrap();
        assert_eq!(
            (a.model.as_str(), a.width, a.height, a.placement.as_str()),
            ("sd", 512, 512, "tiled")
        );
        assert!(a.reason.contains("VAE decode"), "{}", a.reason);
        assert_eq!(a.for_request, request);
        // The request's whole story, once it is over, in one signal.
        let f = next(&mut finished).await;
        let a = f.args().unwrap();
        assert_eq!(
            (
                a.model.as_str(),
                a.request_id.as_str(),
                a.kind.as_str(),
                a.outcome.as_str()
            ),
            ("sd", request.as_str(), "image", "done")
        );
        assert_eq!(a.vae_placement, "tiled");
        assert_eq!(a.freed, vec![("chat".to_owned(), "soft".to_owned(), GIB / 2)]);
        assert!(a.vae_seconds >= 0.0 && a.error.is_empty());
    });
}

#[test]
fn an_unprivileged_caller_gets_access_denied() {
    let bus = PrivateBus::start();
    let (config, _keep) = two_models("");
    let d = bus.daemon(&config);
    let call = |args: &[&str]| {
        let mut all = vec!["call", NAME, PATH, IFACE];
        all.extend_from_slice(args);
        let out = bus.busctl_as(65534, 65534, &all);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        )
    };
    // Reading is open to everyone.
    assert_eq!(call(&["ListModels"]), (true, String::new()));
    assert_eq!(call(&["Estimate", "suu", "sd", "0", "0"]), (true, String::new()));
    // Changing state is not.
    for args in [
        &["Load", "s", "chat"][..],
        &["Unload", "ss", "chat", "hard"],
        &["SetPinned", "sb", "chat", "true"],
    ] {
        let (ok_, err) = call(args);
        assert!(!ok_, "{args:?} was allowed");
        assert!(
            err.contains("needs root or membership in the group \"vramd\" (caller uid 65534)"),
            "{err}"
        );
    }
    assert_eq!(d.model_status("chat")["state"], "unloaded");
    assert_eq!(d.model_status("chat")["pinned"], false);
    // On the wire it is the typed error (busctl prints only the message; dbus-send the name).
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "dbus-send"])
        .arg(format!("--bus={}", bus.address))
        .args([
            "--print-reply",
            "--dest=org.vramd.Vramd1",
            PATH,
            "org.vramd.Vramd1.Load",
            "string:chat",
        ])
        .output()
        .expect("dbus-send (dbus-bin) must be installed");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.starts_with("Error org.vramd.Vramd1.Error.AccessDenied: "), "{err}");
}

#[test]
fn members_of_the_control_group_may_change_state() {
    let bus = PrivateBus::start();
    // `nogroup` (gid 65534) exists on Debian; the caller is uid 65534 with gid 65534.
    let (config, _keep) = two_models("control_group = \"nogroup\"\n");
    let d = bus.daemon(&config);
    let out = bus.busctl_as(65534, 65534, &["call", NAME, PATH, IFACE, "Load", "s", "chat"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(d.model_status("chat")["state"], "loaded");
    // Another group is not enough.
    let out = bus.busctl_as(
        65534,
        65533,
        &["call", NAME, PATH, IFACE, "Unload", "ss", "chat", "hard"],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("group \"nogroup\""));
}

#[test]
fn no_bus_at_start_is_retried_while_http_serves() {
    let dir = tempfile::tempdir().unwrap();
    open_dir(dir.path());
    let address = format!("unix:path={}", dir.path().join("bus").display());
    let config = format!("{BASE_CONFIG}[dbus]\nbus = \"session\"\n");
    let d = Daemon::start_with(&config, |c| {
        c.env("DBUS_SESSION_BUS_ADDRESS", &address);
    });
    assert_eq!(ok(d.get("/health"))["status"], "ok");
    std::thread::sleep(Duration::from_millis(700));
    assert!(
        d.log()
            .contains("D-Bus: cannot serve org.vramd.Vramd1 on the session bus"),
        "{}",
        d.log()
    );
    let bus = PrivateBus::start_at(dir);
    assert!(
        bus.wait_for_name(NAME, Duration::from_secs(15)).is_some(),
        "vramd never connected once the bus came:\n{}",
        d.log()
    );
    assert_eq!(ok(d.get("/health"))["status"], "ok");
}

#[test]
fn a_name_someone_else_holds_is_retried_and_taken_when_released() {
    let bus = PrivateBus::start();
    let rt = runtime();
    let squatter = rt.block_on(async {
        let conn = bus.connect().await;
        conn.request_name(NAME).await.unwrap();
        conn
    });
    let d = bus.daemon_no_wait(BASE_CONFIG);
    assert_eq!(ok(d.get("/v1/status"))["models"], json!([]));
    std::thread::sleep(Duration::from_millis(700));
    assert!(d.log().contains("D-Bus: cannot serve"), "{}", d.log());
    rt.block_on(async { squatter.release_name(NAME).await.unwrap() });
    let owner = bus.wait_for_name(NAME, Duration::from_secs(15));
    assert!(owner.is_some(), "{}", d.log());
    rt.block_on(async {
        assert_eq!(proxy(&bus).await.backend().await.unwrap(), "budget");
    });
}

/// The default context of dbus-daemon's own `system.conf`: nobody owns names, method calls
/// are denied unless a service's policy allows them, replies and signals flow.
const SYSTEM_DEFAULT_POLICY: &str = r#"<policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Properties"/>
  </policy>"#;

#[test]
fn the_system_bus_policy_lets_only_vramd_own_and_everyone_call() {
    // The shipped policy, with `nobody` standing in for the `vramd` user, on a bus whose
    // default denies owning names (as the system bus does).
    let policy = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/dbus/org.vramd.Vramd1.conf")).unwrap();
    let start = policy.find("<policy user=").unwrap();
    let end = policy.rfind("</busconfig>").unwrap();
    let shipped = policy[start..end].replace("user=\"vramd\"", "user=\"nobody\"");
    let bus = PrivateBus::start_with_policy(&format!("{SYSTEM_DEFAULT_POLICY}\n{shipped}"));
    // vramd as root cannot own the name…
    let d = bus.daemon_no_wait(BASE_CONFIG);
    std::thread::sleep(Duration::from_millis(700));
    assert!(d.log().contains("D-Bus: cannot serve"), "{}", d.log());
    drop(d);
    // …vramd as `nobody` can.
    let dir = tempfile::tempdir().unwrap();
    open_dir(dir.path());
    std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let address = bus.address.clone();
    let config = format!("{BASE_CONFIG}[dbus]\nbus = \"session\"\n");
    let d = Daemon::start_in(dir, &config, move |c| {
        use std::os::unix::process::CommandExt;
        c.env("DBUS_SESSION_BUS_ADDRESS", address).uid(65534).gid(65534);
    });
    assert!(
        bus.wait_for_name(NAME, Duration::from_secs(15)).is_some(),
        "{}",
        d.log()
    );
    let call = |iface: &str, member: &str| {
        let out = bus.busctl(&["call", NAME, PATH, iface, member]);
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    assert!(call(IFACE, "ListModels").0);
    assert!(call("org.freedesktop.DBus.Peer", "Ping").0);
    assert!(call("org.freedesktop.DBus.Introspectable", "Introspect").0);
    assert!(bus
        .busctl(&["get-property", NAME, PATH, IFACE, "Version"])
        .status
        .success());
    // Any other interface is stopped by the bus before it reaches vramd.
    let (ok_, err) = call("org.example.Other", "Anything");
    assert!(!ok_);
    assert!(err.contains("denied") || err.contains("Access"), "{err}");
}

#[test]
fn a_request_that_waits_then_times_out_is_told_from_queue_to_end() {
    let bus = PrivateBus::start();
    // The image (1.5 GiB, 2 steps of 3 s) holds the memory the chat needs for longer than
    // the 5 s `wait_timeout`.
    let (config, _keep) = crate::util::fake_two_models(GIB + GIB / 2, "ok delay_ms=3000", "");
    let d = bus.daemon(&config);
    runtime().block_on(async {
        let p = proxy(&bus).await;
        let mut queued = p.receive_request_queued().await.unwrap();
        let mut finished = p.receive_request_finished().await.unwrap();
        let body = json!({"model": "sd", "prompt": "a cat", "size": "64x64", "steps": 2});
        let image = crate::util::post_in_background(&d.socket, "/v1/images/generations", body);
        d.wait_model("sd", Duration::from_secs(10), |m| m["state"] == "busy");
        let chat = json!({"model": "chat", "prompt": "go", "max_tokens": 2});
        let r = d.post_json("/v1/completions", &chat.to_string());
        assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
        let q = next(&mut queued).await;
        let q = q.args().unwrap();
        assert_eq!((q.model.as_str(), q.waiting_for.as_str()), ("chat", "sd"));
        assert!(!q.request_id.is_empty() && q.needed_bytes > q.free_bytes, "{q:?}");
        let f = next(&mut finished).await;
        let f = f.args().unwrap();
        assert_eq!(
            (f.model.as_str(), f.request_id.as_str(), f.outcome.as_str()),
            ("chat", q.request_id.as_str(), "timed_out")
        );
        assert!(f.waited_seconds >= 5.0, "{}", f.waited_seconds);
        assert!(f.needed_bytes > f.free_bytes, "{f:?}");
        assert!(f.error.contains("waited"), "{}", f.error);
        assert_eq!(image.join().unwrap().status, 200);
    });
}
