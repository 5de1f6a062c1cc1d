//! Images from images and what goes with them, as clients send them, on fake workers (what
//! reached the worker is read from the fake's log, `Served::worker_log`):
//! - A1111 `img2img` with `init_images` and `mask` (raw base64 and data URLs, as A1111's
//!   `decode_base64_to_image` takes them), and its 400s, each naming the field;
//! - OpenAI `/v1/images/edits` as Open WebUI posts it (multipart, a repeated `image[]` part
//!   named `<uuid>.png`, `response_format=b64_json`), and `response_format: "url"`;
//! - LoRAs from the prompt, in a configured `lora_dir`, and `GET /sdapi/v1/loras`;
//! - a client that leaves mid-generation stops its image; `progress` shows its preview;
//! - choosing an A1111 checkpoint loads it, and one that cannot fit is a 507.
//!
//! The real engine's img2img, inpainting and hires fix are in `images.rs`.

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};

use crate::a1111::{check_info, is_png, serve};
use crate::util::{events, read_response, send_request};

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A `w`×`h` PNG, red on the left half and white on the right (a mask: repaint the right).
fn png(w: u32, h: u32, alpha: bool) -> Vec<u8> {
    let img = image::RgbaImage::from_fn(w, h, |x, _| {
        let right = x >= w / 2;
        let a = if alpha && !right { 0 } else { 255 };
        if right {
            image::Rgba([255, 255, 255, a])
        } else {
            image::Rgba([200, 0, 0, a])
        }
    });
    let mut out = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgba8(img)
        .write_to(&mut out, image::ImageFormat::Png)
        .unwrap();
    out.into_inner()
}

#[test]
fn a1111_img2img_and_inpainting_reach_the_worker_fitted_and_bad_input_names_its_field() {
    let s = serve("");
    // Raw base64, a 100×60 picture stretched to 256×128, strength 0.4 (socket).
    let body = json!({"prompt": "a boat", "init_images": [b64(&png(100, 60, false))], "denoising_strength": 0.4,
                      "width": 256, "height": 128, "steps": 2, "seed": 5, "resize_mode": 0,
                      "include_init_images": false, "mask_blur": 4, "send_images": true});
    let v = s.post(false, "/sdapi/v1/img2img", &body);
    is_png(v["images"][0].as_str().unwrap());
    let info = check_info(&v);
    assert_eq!(
        (info["width"].as_u64(), info["height"].as_u64(), info["seed"].as_i64()),
        (Some(256), Some(128), Some(5))
    );
    assert_eq!(info["denoising_strength"], 0.4);
    assert!(
        info["infotexts"][0]
            .as_str()
            .unwrap()
            .contains("Denoising strength: 0.4"),
        "{info}"
    );
    assert!(
        s.worker_log()
            .contains(r#"source=Some("256x128/3 mask=None strength=0.4")"#),
        "{}",
        s.worker_log()
    );

    // A data URL picture and mask, crop-resized, inverted mask (TCP, where WebUIs are).
    let url = |p: Vec<u8>| format!("data:image/png;base64,{}", b64(&p));
    let body = json!({"prompt": "inpaint", "init_images": [url(png(64, 64, false))], "mask": url(png(64, 64, false)),
                      "inpainting_fill": 1, "inpaint_full_res": false, "inpainting_mask_invert": 1,
                      "resize_mode": 1, "width": 128, "height": 128, "steps": 1});
    let v = s.post(true, "/sdapi/v1/img2img", &body);
    assert_eq!(v["parameters"]["mask"], true);
    assert!(
        s.worker_log()
            .contains(r#"source=Some("128x128/3 mask=Some(\"128x128/1\") strength=0.75")"#),
        "{}",
        s.worker_log()
    );

    // Each bad input is a 400 naming its field; the daemon goes on serving.
    let bad = |extra: Value, field: &str| {
        let mut body =
            json!({"prompt": "x", "init_images": [b64(&png(8, 8, false))], "width": 64, "height": 64, "steps": 1});
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        let r = s.call(true, "POST", "/sdapi/v1/img2img", Some(&body));
        let e = r.error(400);
        assert_eq!(e["param"], field, "{e}");
    };
    bad(json!({"init_images": ["%%%not base64"]}), "init_images");
    bad(
        json!({"init_images": [b64(b"GIF89a, not a supported picture")]}),
        "init_images",
    );
    bad(json!({"init_images": [b64(&png(8, 8, false)[..40])]}), "init_images");
    bad(json!({"init_images": null}), "init_images");
    bad(json!({"mask": "data:image/png;base64,AAAA"}), "mask");
    bad(
        json!({"mask": b64(&png(8, 8, false)), "inpainting_fill": 2}),
        "inpainting_fill",
    );
    bad(
        json!({"mask": b64(&png(8, 8, false)), "inpaint_full_res": true}),
        "inpaint_full_res",
    );
    bad(json!({"resize_mode": 9}), "resize_mode");
    bad(json!({"denoising_strength": 2}), "denoising_strength");
    bad(json!({"width": 100}), "width");
    bad(json!({"n_iter": 1000}), "batch_size");
    let v = s.post(
        true,
        "/sdapi/v1/txt2img",
        &json!({"prompt": "still here", "width": 64, "height": 64, "steps": 1}),
    );
    is_png(v["images"][0].as_str().unwrap());
}

/// Text fields of a form.
type Fields<'a> = &'a [(&'a str, &'a str)];
/// File parts of a form: field name, file name, bytes.
type Files<'a> = &'a [(&'a str, &'a str, &'a [u8])];

/// A multipart body as Python's aiohttp `FormData` writes Open WebUI's edit request.
fn multipart(boundary: &str, fields: Fields, files: Files) -> Vec<u8> {
    let mut body = Vec::new();
    for (name, value) in fields {
        write!(
            body,
            "--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
        )
        .unwrap();
    }
    for (name, filename, bytes) in files {
        write!(
            body,
            "--{boundary}\r\nContent-Type: image/png\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{filename}\"\r\n\r\n"
        )
        .unwrap();
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    write!(body, "--{boundary}--\r\n").unwrap();
    body
}

fn post_multipart(port: u16, path: &str, body: &[u8]) -> crate::util::Response {
    let boundary_type = "multipart/form-data; boundary=b0undary";
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    send_request(
        &mut c,
        "POST",
        path,
        &[("Content-Type", boundary_type), ("Authorization", "Bearer sk-any")],
        body,
    );
    read_response(&mut c)
}

#[test]
fn open_webui_s_edits_and_url_answers() {
    let s = serve("default_image_model = \"sd2\"\n");
    let picture = png(96, 64, false);
    let body = multipart(
        "b0undary",
        &[
            ("model", "dall-e-2"),
            ("prompt", "make it blue"),
            ("n", "1"),
            ("size", "128x128"),
            ("response_format", "b64_json"),
        ],
        &[("image[]", "7f1c3b1e-8a35-4a43-9a51-1d2f0e6f3a10.png", &picture)],
    );
    let r = post_multipart(s.port, "/v1/images/edits", &body);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    is_png(v["data"][0]["b64_json"].as_str().unwrap());
    assert!(
        s.worker_log()
            .contains(r#"source=Some("128x128/3 mask=None strength=0.75")"#),
        "{}",
        s.worker_log()
    );

    // OpenAI's own form: `image`, a mask whose transparent part is repainted, size auto
    // (the picture's own, rounded to the model's multiple), two images, as URLs.
    let mask = png(96, 64, true);
    let body = multipart(
        "b0undary",
        &[
            ("prompt", "a hat"),
            ("n", "2"),
            ("response_format", "url"),
            ("background", "auto"),
        ],
        &[("image", "in.png", &picture), ("mask", "mask.png", &mask)],
    );
    let r = post_multipart(s.port, "/v1/images/edits", &body);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert!(
        s.worker_log()
            .contains(r#"source=Some("96x64/3 mask=Some(\"96x64/1\") strength=0.75")"#),
        "{}",
        s.worker_log()
    );
    let urls: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["url"].as_str().unwrap())
        .collect();
    assert_eq!(urls.len(), 2);
    assert_ne!(urls[0], urls[1]);
    for url in &urls {
        // On the host the request came in on; the daemon serves the PNG there.
        let path = url.strip_prefix("http://vramd").unwrap_or_else(|| panic!("{url}"));
        let r = s.call(true, "GET", path, None);
        assert_eq!((r.status, r.header("content-type")), (200, Some("image/png")));
        assert!(r.body.starts_with(b"\x89PNG"));
    }
    // The generations route answers URLs too; a name it never made is a JSON 404.
    let v = s.post(
        true,
        "/v1/images/generations",
        &json!({"prompt": "x", "size": "64x64", "response_format": "url", "steps": 1}),
    );
    assert!(v["data"][0]["url"]
        .as_str()
        .unwrap()
        .starts_with("http://vramd/v1/images/files/"));
    s.call(
        true,
        "GET",
        "/v1/images/files/0123456789abcdef0123456789abcdef.png",
        None,
    )
    .error(404);
    s.call(true, "GET", "/v1/images/files/..%2F..%2Fa1111-options.json", None)
        .error(404);

    // Missing parts, a file that is no picture, a bad format: 400s naming them.
    let cases: [(Fields, Files, &str); 4] = [
        (&[("prompt", "x")], &[], "image"),
        (&[], &[("image", "a.png", &picture)], "prompt"),
        (&[("prompt", "x")], &[("image", "a.png", b"not a picture")], "image"),
        (
            &[("prompt", "x"), ("response_format", "jpeg_url")],
            &[("image", "a.png", &picture)],
            "response_format",
        ),
    ];
    for (fields, files, param) in cases {
        let r = post_multipart(s.port, "/v1/images/edits", &multipart("b0undary", fields, files));
        assert_eq!(r.error(400)["param"], param);
    }
    let r = post_multipart(s.port, "/v1/images/edits", b"--b0undary\r\nbroken");
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
}

#[test]
fn loras_from_the_prompt_are_files_of_the_lora_folder() {
    let loras = tempfile::tempdir().unwrap();
    for f in ["ink.safetensors", "paper_v2.gguf", "readme.txt"] {
        std::fs::write(loras.path().join(f), b"lora").unwrap();
    }
    let s = serve("");
    // `serve` has no lora_dir: a prompt with a LoRA is refused, saying so.
    let r = s.call(
        false,
        "POST",
        "/sdapi/v1/txt2img",
        Some(&json!({"prompt": "<lora:ink:1> x", "steps": 1})),
    );
    assert!(r.error(400)["message"].as_str().unwrap().contains("no `lora_dir`"));
    drop(s);

    let s = crate::a1111::serve_with_image_line(&format!("lora_dir = \"{}\"\n", loras.path().display()));
    let list = s.get(true, "/sdapi/v1/loras");
    assert_eq!(crate::a1111::each(&list, "name"), ["ink", "paper_v2"]);
    assert!(list[0]["path"].as_str().unwrap().ends_with("/ink.safetensors"));
    assert_eq!(list[0]["alias"], "ink");

    let body = json!({"prompt": "a cat, <lora:ink:0.6> sketch <lora:paper_v2>", "width": 64, "height": 64, "steps": 1});
    let v = s.post(true, "/sdapi/v1/txt2img", &body);
    let info = check_info(&v);
    assert!(
        info["infotexts"][0]
            .as_str()
            .unwrap()
            .starts_with("a cat, <lora:ink:0.6> sketch <lora:paper_v2>"),
        "{info}"
    );
    let log = s.worker_log();
    let ink = loras.path().join("ink.safetensors");
    let paper = loras.path().join("paper_v2.gguf");
    let expected = format!(
        r#"extras prompt="a cat,  sketch " hires=None source=None loras=["{}:0.6", "{}:1"]"#,
        ink.display(),
        paper.display()
    );
    assert!(log.contains(&expected), "{log}");

    for (prompt, says) in [
        ("<lora:../../etc/passwd:1>", "without a path"),
        ("<lora:readme>", "available: ink, paper_v2"),
        ("<lora:ink:strong>", "weight"),
    ] {
        let r = s.call(
            true,
            "POST",
            "/v1/images/generations",
            Some(&json!({"prompt": prompt, "size": "64x64"})),
        );
        let e = r.error(400);
        assert!(e["message"].as_str().unwrap().contains(says), "{prompt}: {e}");
    }
}

#[test]
fn a_client_that_leaves_mid_generation_stops_its_image() {
    let s = serve("");
    let mut c = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    let body = json!({"prompt": "long", "steps": 150, "n_iter": 8, "width": 64, "height": 64}).to_string();
    send_request(
        &mut c,
        "POST",
        "/sdapi/v1/txt2img",
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.get(true, "/sdapi/v1/progress")["progress"].as_f64().unwrap() == 0.0 {
        assert!(Instant::now() < deadline, "no progress reported");
        std::thread::sleep(Duration::from_millis(5));
    }
    // The preview the worker sent is A1111's `current_image`, unless the client skips it.
    let preview = loop {
        let p = s.get(true, "/sdapi/v1/progress");
        if let Some(img) = p["current_image"].as_str() {
            break img.to_owned();
        }
        assert!(Instant::now() < deadline, "no preview: {p}");
        std::thread::sleep(Duration::from_millis(5));
    };
    is_png(&preview);
    assert!(s.get(true, "/sdapi/v1/progress?skip_current_image=true")["current_image"].is_null());
    let pid = s.d.model_status("sd")["pid"].as_u64().unwrap();
    drop(c);
    // Its worker is stopped (stable-diffusion.cpp has no cancel), long before the 1.2 s the
    // request had left, and the request ends cancelled.
    let left = Instant::now();
    s.d.wait_model("sd", Duration::from_secs(5), |m| m["state"] == "unloaded");
    assert!(!crate::util::pid_alive(pid), "the worker was stopped");
    let finished = events(&s.d)
        .into_iter()
        .find(|e| e["type"] == "request_finished" && e["model"] == "sd")
        .expect("request_finished");
    assert_eq!(finished["outcome"], "cancelled", "{finished}");
    eprintln!("stopped {} ms after the client left", left.elapsed().as_millis());
    // The next image is served at once, from a fresh worker.
    let v = s.post(
        true,
        "/sdapi/v1/txt2img",
        &json!({"prompt": "next", "width": 64, "height": 64, "steps": 1}),
    );
    is_png(v["images"][0].as_str().unwrap());
}

#[test]
fn progress_shows_a_chosen_checkpoint_while_it_loads() {
    // Both image models load in 1.5 s (`load_ms`); SillyTavern polls progress after setting
    // the model, until `job_count` is 0.
    let s = crate::a1111::serve_with_sd_line("ok delay_ms=1 load_ms=1500");
    let set = s.post_in_background(true, "/sdapi/v1/options", json!({"sd_model_checkpoint": "sd2"}));
    let deadline = Instant::now() + Duration::from_secs(10);
    let seen = loop {
        let p = s.get(true, "/sdapi/v1/progress");
        if p["state"]["job_count"] == 1 {
            break p;
        }
        assert!(
            Instant::now() < deadline && !set.is_finished(),
            "no loading job seen: {p}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(seen["state"]["job"], "loading sd2");
    assert_eq!(set.join().unwrap().status, 200);
    let p = s.get(true, "/sdapi/v1/progress");
    assert_eq!(
        (p["progress"].as_f64(), &p["state"]["job_count"]),
        (Some(0.0), &json!(0))
    );
    assert_eq!(s.d.model_status("sd2")["state"], "loaded");
}

#[test]
fn choosing_a_checkpoint_loads_it_and_one_that_cannot_fit_is_a_507() {
    let s = crate::a1111::serve_with_huge();
    s.post(true, "/sdapi/v1/options", &json!({"sd_model_checkpoint": "sd2"}));
    assert_eq!(s.d.model_status("sd2")["state"], "loaded", "loaded when chosen");
    let r = s.call(
        true,
        "POST",
        "/sdapi/v1/options",
        Some(&json!({"sd_model_checkpoint": "huge"})),
    );
    let e = r.error(507);
    assert!(e["message"].as_str().unwrap().contains("huge"), "{e}");
    assert_eq!(
        s.get(true, "/sdapi/v1/options")["sd_model_checkpoint"],
        "sd2",
        "not chosen"
    );
    assert_eq!(s.d.model_status("huge")["state"], "unloaded");
}
