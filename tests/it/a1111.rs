//! The AUTOMATIC1111 and OpenAI image APIs as the WebUIs people use call them, request for
//! request as their public source sends them: Open WebUI (backend/open_webui/routers/
//! images.py: its AUTOMATIC1111 engine, and its OpenAI engine with the model left empty) and
//! SillyTavern (src/endpoints/stable-diffusion.js and the extension's txt2img body), over the
//! Unix socket and over the loopback TCP listener (where nobody may change state, as a WebUI
//! connects). Fake workers (see `util::fake_two_models`) make each image take milliseconds.

use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};

use crate::util::ok;
use crate::util::{fake_two_models, http, read_response, send_request, Daemon, Response, GIB};

pub(crate) struct Served {
    pub d: Daemon,
    pub port: u16,
    _dirs: Vec<tempfile::TempDir>,
}

/// `chat`, `sd` and `sd2` (the same fake file) with `extra` in `[daemon]`, on the socket and TCP.
pub(crate) fn serve(extra: &str) -> Served {
    serve_models(extra, "", "")
}

/// [`serve`] with the image models' fake behaviour `line` (see `examples/fake-worker.rs`).
pub(crate) fn serve_with_sd_line(line: &str) -> Served {
    let (config, dirs) = fake_two_models(GIB, line, "");
    served(config, dirs, "", "")
}

/// [`serve`] with `lines` in both image models' tables (`lora_dir = …`).
pub(crate) fn serve_with_image_line(lines: &str) -> Served {
    serve_models("", lines, "")
}

/// [`serve`] with a third image model, `huge`, larger than the whole 3 GiB budget.
pub(crate) fn serve_with_huge() -> Served {
    let dir = tempfile::tempdir().unwrap();
    let huge = crate::util::model_file(dir.path(), "huge", "ok", 4 * GIB);
    let table = format!(
        "[[models]]\nname = \"huge\"\nkind = \"image\"\npath = \"{}\"\n",
        huge.display()
    );
    let mut s = serve_models("", "", &table);
    s._dirs.push(dir);
    s
}

fn serve_models(extra: &str, image_lines: &str, more: &str) -> Served {
    let (config, dirs) = fake_two_models(GIB, "ok delay_ms=1", extra);
    served(config, dirs, image_lines, more)
}

/// `config` of [`fake_two_models`] with `sd2` (the same file as `sd`) and `more` added.
fn served(config: String, dirs: Vec<tempfile::TempDir>, image_lines: &str, more: &str) -> Served {
    let sd_path = config.lines().last().unwrap().to_owned();
    let config =
        format!("{config}{image_lines}[[models]]\nname = \"sd2\"\nkind = \"image\"\n{sd_path}\n{image_lines}{more}");
    let port = crate::util::free_port();
    let d = Daemon::start_with(&config, |c| {
        c.arg("--tcp").arg(format!("127.0.0.1:{port}"));
    });
    Served { d, port, _dirs: dirs }
}

impl Served {
    /// One request, over TCP or the Unix socket.
    pub fn call(&self, tcp: bool, method: &str, path: &str, body: Option<&Value>) -> Response {
        let body = body.map(Value::to_string).unwrap_or_default();
        let headers: &[(&str, &str)] = if method == "POST" {
            &[("Content-Type", "application/json")]
        } else {
            &[]
        };
        if !tcp {
            return http(&self.d.socket, method, path, headers, body.as_bytes());
        }
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        send_request(&mut s, method, path, headers, body.as_bytes());
        read_response(&mut s)
    }

    /// A POST on a thread of its own, over TCP or the socket; join it for the answer.
    pub fn post_in_background(&self, tcp: bool, path: &'static str, body: Value) -> std::thread::JoinHandle<Response> {
        if !tcp {
            return crate::util::post_in_background(&self.d.socket, path, body);
        }
        let port = self.port;
        std::thread::spawn(move || {
            let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
            let headers = [("Content-Type", "application/json")];
            send_request(&mut c, "POST", path, &headers, body.to_string().as_bytes());
            read_response(&mut c)
        })
    }

    /// What the fake image worker was asked (see `examples/fake-worker.rs`).
    pub fn worker_log(&self) -> String {
        std::fs::read_to_string(self._dirs[1].path().join("sd.bin.log")).unwrap_or_default()
    }

    pub fn get(&self, tcp: bool, path: &str) -> Value {
        ok(self.call(tcp, "GET", path, None))
    }

    pub fn post(&self, tcp: bool, path: &str, body: &Value) -> Value {
        ok(self.call(tcp, "POST", path, Some(body)))
    }
}

/// The `key` of each entry of a JSON list (`name` of each sampler, `title` of each model…).
pub(crate) fn each(list: &Value, key: &str) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|x| x[key].as_str().unwrap().to_owned())
        .collect()
}

/// The `info` of an A1111 answer, a JSON string.
pub(crate) fn check_info(v: &Value) -> Value {
    serde_json::from_str(v["info"].as_str().expect("info is a JSON string")).unwrap()
}

/// Checks that an image is a base64 PNG (the fake worker's are 1×1, without text chunks).
pub(crate) fn is_png(b64: &str) {
    let png = base64::engine::general_purpose::STANDARD.decode(b64).unwrap();
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
}

/// A txt2img answer, checked field by field as Open WebUI and SillyTavern read it.
fn check_txt2img(v: &Value, model: &str, count: usize, size: u32) -> Value {
    let images = v["images"].as_array().unwrap();
    assert_eq!(images.len(), count, "{v}");
    for image in images {
        is_png(image.as_str().unwrap());
    }
    let info: Value = serde_json::from_str(v["info"].as_str().expect("info is a JSON string")).unwrap();
    let seeds = info["all_seeds"].as_array().unwrap();
    assert_eq!(seeds.len(), count);
    assert_eq!(info["seed"], seeds[0]);
    assert_eq!(
        (info["width"].as_u64(), info["height"].as_u64()),
        (Some(size.into()), Some(size.into()))
    );
    assert_eq!(info["sd_model_name"], model);
    assert_eq!(info["all_prompts"].as_array().unwrap().len(), count);
    assert_eq!(info["infotexts"].as_array().unwrap().len(), count);
    assert_eq!(v["parameters"]["model"], model);
    assert_eq!(v["parameters"]["width"], size);
    info
}

/// Open WebUI's AUTOMATIC1111 engine: verify (GET options), list models (sd-models' title and
/// model_name), set the model (GET options, then POST the whole dict back with the checkpoint
/// changed), generate (GET options for the model, then txt2img without a model).
fn open_webui_a1111(s: &Served, tcp: bool) {
    let options = s.get(tcp, "/sdapi/v1/options");
    assert_eq!(options["sd_model_checkpoint"], "sd", "the default image model");
    assert_eq!(options["sd_vae"], "Automatic");
    assert_eq!(options["CLIP_stop_at_last_layers"], 1);
    assert_eq!(options["samples_format"], "png");
    let models = s.get(tcp, "/sdapi/v1/sd-models");
    assert_eq!(each(&models, "title"), ["sd", "sd2"]);
    assert_eq!(models[1]["model_name"], "sd2");
    assert!(models[1]["filename"].as_str().unwrap().ends_with("/sd.bin"), "{models}");

    let mut options = s.get(tcp, "/sdapi/v1/options");
    options["sd_model_checkpoint"] = json!("sd2");
    s.post(tcp, "/sdapi/v1/options", &options);
    assert_eq!(s.get(tcp, "/sdapi/v1/options")["sd_model_checkpoint"], "sd2");

    let body = json!({"prompt": "a lighthouse", "batch_size": 2, "width": 256, "height": 256, "steps": 2});
    let v = s.post(tcp, "/sdapi/v1/txt2img", &body);
    let info = check_txt2img(&v, "sd2", 2, 256);
    assert_eq!(info["prompt"], "a lighthouse");
    assert_eq!(info["steps"], 2);
    let seed = info["seed"].as_i64().unwrap();
    assert_eq!(info["all_seeds"], json!([seed, seed + 1]));

    // Back to the first, by its file's name this time (A1111 titles are file names).
    s.post(tcp, "/sdapi/v1/options", &json!({"sd_model_checkpoint": "sd"}));
    assert_eq!(s.get(tcp, "/sdapi/v1/options")["sd_model_checkpoint"], "sd");
}

#[test]
fn open_webui_s_a1111_engine_over_the_socket_and_tcp() {
    let s = serve("");
    open_webui_a1111(&s, false);
    open_webui_a1111(&s, true);
    // A checkpoint that does not exist: 400 naming it and the models; nothing changes.
    let r = s.call(
        true,
        "POST",
        "/sdapi/v1/options",
        Some(&json!({"sd_model_checkpoint": "nope.safetensors"})),
    );
    let e = r.error(400);
    assert_eq!(e["param"], "sd_model_checkpoint");
    let message = e["message"].as_str().unwrap();
    assert!(
        message.contains("\"nope.safetensors\"") && message.contains("sd, sd2"),
        "{message}"
    );
    assert_eq!(s.get(false, "/sdapi/v1/options")["sd_model_checkpoint"], "sd");
}

#[test]
fn open_webui_s_openai_engine_with_the_model_left_empty() {
    let s = serve("default_image_model = \"sd2\"\n");
    for (model, tcp) in [
        (json!("dall-e-2"), true),
        (json!("dall-e-3"), false),
        (Value::Null, true),
    ] {
        let mut body = json!({"prompt": "a fox", "n": 1, "size": "256x256", "response_format": "b64_json"});
        if !model.is_null() {
            body["model"] = model;
        }
        let v = s.post(tcp, "/v1/images/generations", &body);
        let data = v["data"].as_array().unwrap();
        assert_eq!(data.len(), 1);
        is_png(data[0]["b64_json"].as_str().unwrap());
    }
    assert_eq!(s.d.model_status("sd2")["state"], "loaded", "the default image model");
    assert_eq!(s.d.model_status("sd")["state"], "unloaded");
    // `size: auto`, `quality`, `style`, `user`, `output_format: png` are accepted.
    let body = json!({"model": "gpt-image-1", "prompt": "x", "size": "auto", "quality": "hd", "style": "vivid",
                      "user": "u", "background": "auto", "output_format": "png", "steps": 1});
    let v = s.post(true, "/v1/images/generations", &body);
    is_png(v["data"][0]["b64_json"].as_str().unwrap());
    let e = s.call(
        true,
        "POST",
        "/v1/images/generations",
        Some(&json!({"prompt": "x", "output_format": "webp"})),
    );
    assert_eq!(e.error(400)["param"], "output_format");
    // Any other unknown name stays a 404 that lists the image models.
    let e = s.call(
        true,
        "POST",
        "/v1/images/generations",
        Some(&json!({"model": "sdxl", "prompt": "x"})),
    );
    let e = e.error(404);
    assert_eq!(e["code"], "model_not_found");
    assert!(e["message"].as_str().unwrap().contains("sd, sd2"), "{e}");
    // A1111 requests start from the default image model too.
    assert_eq!(s.get(true, "/sdapi/v1/options")["sd_model_checkpoint"], "sd2");
}

/// SillyTavern's connect: ping (GET options), then its menus.
fn sillytavern_connect(s: &Served) {
    let options = s.get(true, "/sdapi/v1/options");
    assert!(
        options.get("forge_preset").is_none(),
        "SillyTavern would take vramd for Forge"
    );
    let samplers = s.get(true, "/sdapi/v1/samplers");
    let names = each(&samplers, "name");
    assert!(
        names.iter().any(|n| n == "Euler a") && names.iter().any(|n| n == "DPM++ 2M"),
        "{names:?}"
    );
    assert_eq!(samplers[0]["options"], json!({}));
    let schedulers = s.get(true, "/sdapi/v1/schedulers");
    let names = each(&schedulers, "name");
    assert_eq!(&names[..3], ["automatic", "normal", "karras"]);
    assert!(
        names.iter().any(|n| n == "align_your_steps") && !names.iter().any(|n| n == "polyexponential"),
        "{names:?}"
    );
    assert_eq!(schedulers[2]["label"], "Karras");
    assert_eq!(schedulers[2]["default_rho"], 7.0);
    // Its hires menu: "None" first (it relies on that), then the latent modes, then the rest.
    assert_eq!(
        each(&s.get(true, "/sdapi/v1/upscalers"), "name"),
        ["None", "Lanczos", "Nearest"]
    );
    assert_eq!(
        each(&s.get(true, "/sdapi/v1/latent-upscale-modes"), "name"),
        [
            "Latent",
            "Latent (antialiased)",
            "Latent (bicubic)",
            "Latent (bicubic antialiased)",
            "Latent (nearest)",
            "Latent (nearest-exact)"
        ]
    );
    assert_eq!(
        s.get(true, "/sdapi/v1/sd-vae"),
        json!([]),
        "no model has a separate VAE"
    );
    assert_eq!(s.get(true, "/sdapi/v1/sd-modules"), json!([]));
    let models = s.get(true, "/sdapi/v1/sd-models");
    assert_eq!(models[0]["title"], "sd");
    for path in [
        "/sdapi/v1/loras",
        "/sdapi/v1/embeddings",
        "/sdapi/v1/cmd-flags",
        "/sdapi/v1/memory",
    ] {
        s.get(true, path);
    }
    assert!(
        s.get(true, "/sdapi/v1/memory")["cuda"]["system"]["total"]
            .as_u64()
            .unwrap()
            == 3 * GIB
    );
    s.post(true, "/sdapi/v1/refresh-checkpoints", &json!({}));
}

/// The body SillyTavern's extension sends (generateAutoImage), with its server's own fields.
fn sillytavern_body(prompt: &str, steps: u32, enable_hr: bool) -> Value {
    json!({
        "url": "http://127.0.0.1:7867", "auth": "",
        "prompt": prompt, "negative_prompt": "lowres", "sampler_name": "DPM++ 2M", "scheduler": "normal",
        "steps": steps, "cfg_scale": 7, "width": 256, "height": 256, "restore_faces": false,
        "enable_hr": enable_hr, "hr_upscaler": "None", "hr_scale": 2, "hr_additional_modules": [],
        "denoising_strength": 0.7, "hr_second_pass_steps": 0,
        "override_settings": {"CLIP_stop_at_last_layers": 1},
        "override_settings_restore_afterwards": true, "clip_skip": 1,
        "save_images": true, "send_images": true, "do_not_save_grid": false, "do_not_save_samples": false,
    })
}

#[test]
fn sillytavern_connects_generates_with_normal_and_interrupts_over_tcp() {
    let s = serve("");
    sillytavern_connect(&s);
    // set-model: POST the checkpoint alone, then poll progress until idle.
    s.post(true, "/sdapi/v1/options", &json!({"sd_model_checkpoint": "sd2"}));
    let p = s.get(true, "/sdapi/v1/progress");
    assert_eq!(
        (p["progress"].as_f64(), &p["state"]["job_count"]),
        (Some(0.0), &json!(0))
    );

    let v = s.post(true, "/sdapi/v1/txt2img", &sillytavern_body("a cat", 2, false));
    let info = check_txt2img(&v, "sd2", 1, 256);
    assert_eq!(info["scheduler"], "discrete");
    assert_eq!(info["sampler_name"], "dpm++2m");
    // Hires fix on: the answer is at twice the size, and the worker was asked for the
    // second pass ("None" is a plain resize: the engine's Lanczos).
    let v = s.post(true, "/sdapi/v1/txt2img", &sillytavern_body("a hires cat", 2, true));
    let info = check_info(&v);
    assert_eq!(
        (info["width"].as_u64(), info["height"].as_u64()),
        (Some(512), Some(512))
    );
    assert_eq!(
        (&v["parameters"]["width"], &v["parameters"]["enable_hr"]),
        (&json!(256), &json!(true))
    );
    assert!(
        info["infotexts"][0]
            .as_str()
            .unwrap()
            .contains("Hires upscaler: Lanczos"),
        "{info}"
    );
    let log = s.worker_log();
    assert!(
        log.contains(r#"extras prompt="a hires cat" hires=Some("Lanczos@512x512+0")"#),
        "{log}"
    );
    let mut body = sillytavern_body("a latent cat", 2, true);
    body["hr_upscaler"] = json!("Latent (nearest)");
    body["hr_scale"] = json!(1.5);
    body["hr_second_pass_steps"] = json!(3);
    assert_eq!(check_info(&s.post(true, "/sdapi/v1/txt2img", &body))["width"], 384);
    assert!(s.worker_log().contains(r#"hires=Some("Latent (nearest)@384x384+3")"#));
    // Only one side given: the other keeps the proportions.
    let mut body = sillytavern_body("wide", 1, true);
    body["width"] = json!(256);
    body["height"] = json!(128);
    body["hr_resize_x"] = json!(512);
    let info = check_info(&s.post(true, "/sdapi/v1/txt2img", &body));
    assert_eq!(
        (info["width"].as_u64(), info["height"].as_u64()),
        (Some(512), Some(256))
    );
    // An upscaler model vramd does not have, a second pass past the model's limit: 400s
    // naming the field.
    body["hr_upscaler"] = json!("R-ESRGAN 4x+");
    let r = s.call(true, "POST", "/sdapi/v1/txt2img", Some(&body));
    let e = r.error(400);
    assert_eq!(e["param"], "hr_upscaler");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("Latent (nearest-exact), Lanczos"),
        "{e}"
    );
    // What changes the image and vramd cannot do is a 400 naming it; its "off" value (what
    // SillyTavern sends) is fine.
    for (field, value) in [
        ("restore_faces", json!(true)),
        ("tiling", json!(true)),
        ("subseed_strength", json!(0.5)),
        ("styles", json!(["Cinematic"])),
        ("alwayson_scripts", json!({"ADetailer": {"args": [true]}})),
        ("hr_prompt", json!("other")),
    ] {
        let mut body = sillytavern_body("x", 1, false);
        body[field] = value;
        let r = s.call(true, "POST", "/sdapi/v1/txt2img", Some(&body));
        assert_eq!(r.error(400)["param"], field);
    }
    let mut body = sillytavern_body("off", 1, false);
    for (field, value) in [
        ("tiling", json!(false)),
        ("styles", json!([])),
        ("alwayson_scripts", json!({})),
        ("subseed_strength", json!(0)),
    ] {
        body[field] = value;
    }
    check_info(&s.post(true, "/sdapi/v1/txt2img", &body));
    let mut body = sillytavern_body("huge", 1, true);
    body["hr_scale"] = json!(4);
    body["width"] = json!(1024);
    let r = s.call(true, "POST", "/sdapi/v1/txt2img", Some(&body));
    assert_eq!(r.error(400)["param"], "hr_resize_x");

    // Stop: its interrupt over TCP is not refused, and stops the generation.
    let mut body = sillytavern_body("slow", 150, false);
    body["n_iter"] = json!(8);
    let slow = s.post_in_background(true, "/sdapi/v1/txt2img", body);
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.get(true, "/sdapi/v1/progress")["progress"].as_f64().unwrap() == 0.0 {
        assert!(Instant::now() < deadline, "no progress reported");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(s.post(true, "/sdapi/v1/interrupt", &json!({}))["interrupted"], true);
    assert_eq!(slow.join().unwrap().error(409)["code"], "interrupted");
    // Skip with nothing running: answered, nothing to stop.
    assert_eq!(s.post(true, "/sdapi/v1/skip", &json!({}))["interrupted"], false);
}

#[test]
fn the_chosen_checkpoint_and_unknown_options_survive_a_restart() {
    let state = tempfile::tempdir().unwrap();
    let extra = format!("state_dir = \"{}\"\n", state.path().display());
    let s = serve(&extra);
    let set = json!({"sd_model_checkpoint": "sd2", "sd_vae": "Automatic", "a_ui_setting": {"x": [1, 2]}});
    assert_eq!(s.post(true, "/sdapi/v1/options", &set), json!(true));
    drop(s);
    let file = Path::new(state.path()).join("a1111-options.json");
    assert!(file.is_file());
    let s = serve(&extra);
    let options = s.get(false, "/sdapi/v1/options");
    assert_eq!(options["sd_model_checkpoint"], "sd2");
    assert_eq!(options["a_ui_setting"], json!({"x": [1, 2]}));
    check_txt2img(
        &s.post(
            false,
            "/sdapi/v1/txt2img",
            &json!({"prompt": "x", "width": 256, "height": 256, "steps": 1}),
        ),
        "sd2",
        1,
        256,
    );
    drop(s);
    // A broken file is logged and ignored: the daemon starts with the defaults.
    std::fs::write(&file, "{broken").unwrap();
    let s = serve(&extra);
    assert_eq!(s.get(false, "/sdapi/v1/options")["sd_model_checkpoint"], "sd");
    assert!(s.d.log().contains("ignoring the A1111 options"), "{}", s.d.log());
}
