//! End to end: the real worker binary, tiny random-weight stable-diffusion.cpp models
//! (`vramd-gguf`'s `testdata/sd-tiny/`), the wire protocol.

mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use support::{image_request, load_request, manifest, png_facts, sd1, unbase64, write, zimage, Worker};
use vramd_protocol::{
    ErrorCode, GenerationPeaks, Health, ImageEvent, ImageFiles, ImageLoadResponse, ImageRequest, UnloadMode,
    VaePlacement, WorkerError, WorkerState, IMAGES, LOAD,
};

/// What a finished generation streamed.
#[derive(Debug)]
struct Run {
    switch_ms: u64,
    progress: Vec<(u32, u32)>,
    /// (index, seed, PNG bytes)
    images: Vec<(u32, i64, Vec<u8>)>,
    /// (step, PNG bytes) of each `preview`.
    previews: Vec<(u32, Vec<u8>)>,
    health: Health,
    peaks: GenerationPeaks,
    secs: f64,
}

/// Runs a generation to its end, checking the stream's shape: `started`, `progress`…,
/// `image`s, `done`.
fn generate(w: &Worker, req: &ImageRequest) -> Run {
    let t = Instant::now();
    let (status, events) = w.stream(req);
    assert_eq!(status, 200, "{}", w.log());
    let events = events.collect();
    let secs = t.elapsed().as_secs_f64();
    let Some(ImageEvent::Started { switch_ms }) = events.first().cloned() else {
        panic!("first event is not started: {events:?}\n{}", w.log());
    };
    let Some(ImageEvent::Done { health, peaks }) = events.last().cloned() else {
        panic!("last event is not done: {events:?}\n{}", w.log());
    };
    let (mut progress, mut images, mut previews) = (Vec::new(), Vec::new(), Vec::new());
    for e in &events[1..events.len() - 1] {
        match e {
            ImageEvent::Progress { step, steps } => {
                assert!(images.is_empty(), "progress after an image: {events:?}");
                progress.push((*step, *steps));
            }
            ImageEvent::Image {
                index,
                seed,
                png_base64,
            } => images.push((*index, *seed, unbase64(png_base64))),
            ImageEvent::Preview { step, png_base64 } => {
                assert!(images.is_empty(), "preview after an image: {events:?}");
                previews.push((*step, unbase64(png_base64)));
            }
            other => panic!("unexpected event in the middle: {other:?}"),
        }
    }
    Run {
        switch_ms,
        progress,
        images,
        previews,
        health,
        peaks,
        secs,
    }
}

fn load(w: &Worker, name: &str, files: ImageFiles, vae: VaePlacement) -> ImageLoadResponse {
    let r = w.post(LOAD, &load_request(name, files, vae));
    assert_eq!(r.status, 200, "{}\n{}", r.text(), w.log());
    r.json()
}

/// One image of `req`'s size, with its `parameters` text; returns the PNG bytes.
fn check_one_image(run: &Run, req: &ImageRequest) -> Vec<u8> {
    assert_eq!(run.images.len(), 1, "{run:?}");
    let (index, seed, png) = run.images[0].clone();
    assert_eq!((index, Some(seed)), (0, req.seed));
    let facts = png_facts(&png);
    assert_eq!((facts.width, facts.height), (req.width, req.height));
    assert_eq!((facts.bit_depth, facts.color_type), (8, 2), "8-bit RGB");
    assert_eq!(facts.texts, req.png_text);
    png
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1_048_576.0
}

/// The whole life of a Z-Image worker, in the order the daemon drives one: each step starts
/// from the state the one before left (loaded, which context, which image a seed makes).
#[test]
fn zimage_generates_switches_vae_placement_and_unloads() {
    let mut w = Worker::start();
    let h = zimage_loads(&w);
    let req = image_request(VaePlacement::Gpu);
    let png_a = first_image_is_measured(&w, &req, &h);
    seeds_decide_the_image(&w, &req, &png_a);
    health_says_busy_mid_generation(&w, &req);
    vae_placements_switch_the_context(&w, &req, &h, &png_a);
    a_client_that_leaves_does_not_stop_the_next(&w, &req, &png_a);
    refusals_name_the_field(&w, &req);
    unloads_free_the_context(&w, &req, &h, &png_a);
    exits_on_stdin_eof(&mut w);
}

/// An empty worker, then the Z-Image model: health reports each component's weights (the
/// daemon's VAE estimates read them) and no compute until something is generated. Returns
/// the health after the load.
fn zimage_loads(w: &Worker) -> Health {
    let h = w.health();
    assert_eq!(h.state, WorkerState::Empty);
    assert_eq!(h.pid, w.child.id());
    assert_eq!(h.image, None);

    let files = zimage(w.dir.path());
    let loaded = load(w, "zi", files, VaePlacement::Gpu);
    let h = loaded.health.clone();
    eprintln!("Z-Image load: {} ms, {h:?}", loaded.load_ms);
    assert_eq!(h.state, WorkerState::Loaded);
    assert_eq!(h.model.as_deref(), Some("zi"));
    // Which CPU code stable-diffusion.cpp's ggml runs, and this CPU's level.
    let cpu = h.cpu.clone().expect("the CPU code");
    assert!(
        cpu.starts_with("x86-64") && cpu.contains(" build (") && cpu.contains(" CPU"),
        "{cpu}"
    );
    let image = h.image.clone().expect("image health");
    assert_eq!(image.vae_backend, VaePlacement::Gpu);
    assert_eq!(image.last, None);
    let names: Vec<&str> = image.components.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["text_encoders", "diffusion_model", "taesd"], "{image:?}");
    assert!(image.components.iter().all(|c| c.bytes > 0));
    assert_eq!(h.bytes.weights, image.components.iter().map(|c| c.bytes).sum::<u64>());
    assert_eq!((h.bytes.context, h.bytes.compute), (0, 0));
    for c in &image.components {
        eprintln!("  {}: {:.2} MiB on {}", c.name, mib(c.bytes), c.device);
    }
    h
}

/// 64×64 in 2 steps: started, progress 1..=2, one PNG with the text chunk, done; the peaks
/// it measured are in `done` and in health. Returns the PNG, which later steps compare with.
fn first_image_is_measured(w: &Worker, req: &ImageRequest, h: &Health) -> Vec<u8> {
    let a = generate(w, req);
    eprintln!("first image: {:.2}s end to end, {:?}", a.secs, a.peaks);
    assert_eq!(a.switch_ms, 0);
    assert_eq!(a.progress, [(1, 2), (2, 2)]);
    let png_a = check_one_image(&a, req);
    // A preview of the sampling: the latent projected to RGB, at the latent's size.
    let (_, preview) = a.previews.first().expect("a preview");
    let facts = png_facts(preview);
    assert_eq!(
        (facts.width, facts.height),
        (req.width / 8, req.height / 8),
        "{facts:?}"
    );
    let p = &a.peaks;
    assert_eq!((p.width, p.height, p.vae), (64, 64, VaePlacement::Gpu));
    assert!(p.sampling_bytes > 0 && p.vae_decode_bytes > 0, "{p:?}");
    assert_eq!(a.health.state, WorkerState::Loaded);
    let last = a.health.image.as_ref().and_then(|i| i.last.clone());
    assert_eq!(last.as_ref(), Some(p));
    assert_eq!(a.health.bytes.compute, p.sampling_bytes.max(p.vae_decode_bytes));
    assert_eq!(a.health.bytes.weights, h.bytes.weights);
    assert!(a.health.peak_bytes >= a.health.bytes.total);
    assert_eq!(w.health(), a.health);

    // The same seed makes the same bytes; the compute buffers are measured again.
    let b = generate(w, req);
    assert_eq!(check_one_image(&b, req), png_a, "same seed, same PNG");
    assert_eq!(
        (b.peaks.sampling_bytes, b.peaks.vae_decode_bytes),
        (p.sampling_bytes, p.vae_decode_bytes)
    );
    eprintln!("second image: {:.2}s, {:?}", b.secs, b.peaks);
    png_a
}

/// Another seed, another image; a batch counts seeds up from the request's and progress
/// over the whole batch, and its first image is the single one.
fn seeds_decide_the_image(w: &Worker, req: &ImageRequest, png_a: &[u8]) {
    let other = generate(
        w,
        &ImageRequest {
            seed: Some(7),
            ..req.clone()
        },
    );
    assert_ne!(other.images[0].2, png_a, "another seed, another image");

    let batch = generate(
        w,
        &ImageRequest {
            batch_count: 2,
            ..req.clone()
        },
    );
    assert_eq!(batch.progress, [(1, 4), (2, 4), (3, 4), (4, 4)]);
    let seeds: Vec<(u32, i64)> = batch.images.iter().map(|(i, s, _)| (*i, *s)).collect();
    assert_eq!(seeds, [(0, 42), (1, 43)]);
    assert_eq!(batch.images[0].2, png_a, "the first of a batch is the single image");
}

/// Health answers while a generation runs, and says busy: the daemon polls it then.
fn health_says_busy_mid_generation(w: &Worker, req: &ImageRequest) {
    let (status, mut events) = w.stream(req);
    assert_eq!(status, 200);
    assert!(matches!(events.next_event(), Some(ImageEvent::Started { .. })));
    let mid = w.health();
    assert_eq!(mid.state, WorkerState::Busy, "{mid:?}");
    let rest = events.collect();
    assert!(matches!(rest.last(), Some(ImageEvent::Done { .. })), "{rest:?}");
}

/// Tiled decode runs on the same context; a CPU VAE re-creates the context (from the page
/// cache) and keeps it until a request asks for the device again.
fn vae_placements_switch_the_context(w: &Worker, req: &ImageRequest, h: &Health, png_a: &[u8]) {
    let tiled = generate(
        w,
        &ImageRequest {
            vae: VaePlacement::Tiled,
            ..req.clone()
        },
    );
    eprintln!("tiled: {:.2}s, {:?}", tiled.secs, tiled.peaks);
    assert_eq!(tiled.switch_ms, 0);
    assert_eq!(tiled.peaks.vae, VaePlacement::Tiled);
    check_one_image(&tiled, req);

    let cpu_req = ImageRequest {
        vae: VaePlacement::Cpu,
        ..req.clone()
    };
    let cpu = generate(w, &cpu_req);
    eprintln!(
        "cpu VAE: switch {} ms, {:.2}s, {:?}",
        cpu.switch_ms, cpu.secs, cpu.peaks
    );
    assert!(cpu.switch_ms > 0);
    let png_cpu = check_one_image(&cpu, req);
    if h.device == "cpu" {
        // Everything runs on the CPU either way: the same bytes.
        assert_eq!(png_cpu, png_a);
    }
    let cpu_image = cpu.health.image.clone().unwrap();
    assert_eq!(cpu_image.vae_backend, VaePlacement::Cpu);
    assert_eq!(cpu.peaks.vae, VaePlacement::Cpu);
    let tae = cpu_image.components.iter().find(|c| c.name == "taesd").unwrap();
    assert_eq!(tae.device, "cpu");
    // The TAESD and its decode buffer were placed on the CPU: host bytes, out of the total,
    // on a CPU-only build too (where "the device" is the CPU as well).
    let b = cpu.health.bytes;
    assert_eq!(
        (b.weights, b.compute),
        (h.bytes.weights - tae.bytes, cpu.peaks.sampling_bytes)
    );
    assert!(
        b.host >= tae.bytes + cpu.peaks.vae_decode_bytes,
        "{b:?} {:?}",
        cpu.peaks
    );
    assert_eq!(generate(w, &cpu_req).switch_ms, 0, "the CPU-VAE context is kept");
    let back = generate(w, req);
    assert!(back.switch_ms > 0, "gpu after cpu switches back");
    assert_eq!(back.health.image.unwrap().vae_backend, VaePlacement::Gpu);
    assert_eq!(
        (back.health.bytes.weights, back.health.bytes.host),
        (h.bytes.weights, 0)
    );
}

/// A client that leaves mid-generation: there is no cancel in stable-diffusion.cpp, so it
/// runs to its end, and the next request is served as if nothing happened.
fn a_client_that_leaves_does_not_stop_the_next(w: &Worker, req: &ImageRequest, png_a: &[u8]) {
    let (_, mut events) = w.stream(req);
    assert!(matches!(events.next_event(), Some(ImageEvent::Started { .. })));
    drop(events);
    let after = generate(w, req);
    assert_eq!(after.images[0].2, png_a);
}

/// Refusals name the field, before anything runs; bodies that are not the protocol and
/// unknown paths or methods get the protocol's JSON errors; the model stays loaded.
fn refusals_name_the_field(w: &Worker, req: &ImageRequest) {
    let with = |change: fn(&mut ImageRequest)| {
        let mut r = req.clone();
        change(&mut r);
        r
    };
    for (bad, field) in [
        (with(|r| r.width = 100), "width"),
        (with(|r| r.height = 0), "height"),
        (with(|r| r.steps = 0), "steps"),
        (with(|r| r.batch_count = 0), "batch_count"),
        (with(|r| r.sampler = "euler_b".into()), "sampler"),
        (with(|r| r.scheduler = "hourly".into()), "scheduler"),
    ] {
        let e = w.post(IMAGES, &bad).expect_error(400, ErrorCode::InvalidRequest);
        assert!(e.message.starts_with(field), "{field}: {e:?}");
    }
    w.post_raw(IMAGES, "{\"prompt\":")
        .expect_error(400, ErrorCode::InvalidRequest);
    w.post_raw(LOAD, "{}").expect_error(400, ErrorCode::InvalidRequest);
    assert_eq!(w.get("/internal/nothing").status, 404);
    assert_eq!(w.get(IMAGES).status, 405);
    assert_eq!(w.health().state, WorkerState::Loaded);
}

/// Soft and hard unload both free the context (for images there is nothing softer to
/// drop); generation is then refused. A model loaded with its VAE on the CPU needs no
/// switch for a CPU-VAE request.
fn unloads_free_the_context(w: &Worker, req: &ImageRequest, h: &Health, png_a: &[u8]) {
    let s = w.unload(UnloadMode::Soft);
    assert_eq!(s.state, WorkerState::Empty);
    assert_eq!((s.bytes.total, s.model.clone()), (0, None));
    w.post(IMAGES, req).expect_error(409, ErrorCode::NotLoaded);
    let files = zimage(w.dir.path());
    load(w, "zi", files, VaePlacement::Cpu);
    let cpu_req = ImageRequest {
        vae: VaePlacement::Cpu,
        ..req.clone()
    };
    let cpu_first = generate(w, &cpu_req);
    assert_eq!(cpu_first.switch_ms, 0, "loaded with the VAE on the CPU");
    let png_cpu_first = check_one_image(&cpu_first, req);
    if h.device == "cpu" {
        assert_eq!(png_cpu_first, png_a);
    }
    assert_eq!(w.unload(UnloadMode::Hard).state, WorkerState::Empty);
}

/// The daemon going away closes our stdin: the worker exits 0 and removes its socket.
fn exits_on_stdin_eof(w: &mut Worker) {
    w.close_stdin();
    let status = w.wait_exit(Duration::from_secs(10)).expect("worker exits on stdin EOF");
    assert!(status.success(), "{status}\n{}", w.log());
    assert!(!w.socket.exists());
}

/// Every kind of bad file fails the load with `load_failed` and a reason that names what is
/// wrong; the worker stays up, empty, and still loads and serves a good model after them.
#[test]
fn bad_model_files_fail_the_load_with_the_reason() {
    let w = Worker::start();
    let good = zimage(w.dir.path());
    missing_files_fail_the_load(&w, &good);
    stable_diffusion_cpp_validation_says_which_tensor(&w, &good);
    truncated_and_garbage_files_fail_the_load(&w, &good);

    load(&w, "zi", good, VaePlacement::Gpu);
    let run = generate(&w, &image_request(VaePlacement::Gpu));
    assert_eq!(run.images.len(), 1);
}

/// Loads `good` with `diffusion_model` in place of its own, which must fail with
/// `load_failed`; returns the error.
fn load_fails(w: &Worker, name: &str, good: &ImageFiles, diffusion_model: Option<PathBuf>) -> WorkerError {
    let files = ImageFiles {
        diffusion_model,
        ..good.clone()
    };
    w.post(LOAD, &load_request(name, files, VaePlacement::Gpu))
        .expect_error(422, ErrorCode::LoadFailed)
}

/// Missing files, and no model file at all: refused before stable-diffusion.cpp sees them.
fn missing_files_fail_the_load(w: &Worker, good: &ImageFiles) {
    let e = load_fails(w, "m", good, Some(w.path("missing.gguf")));
    assert!(e.message.contains("missing.gguf"), "{e:?}");
    load_fails(w, "n", good, None);
}

/// A diffusion model without one of its tensors, and one with a tensor of the wrong shape:
/// stable-diffusion.cpp's validation says which, new_sd_ctx returns NULL, the worker says
/// why and stays up.
fn stable_diffusion_cpp_validation_says_which_tensor(w: &Worker, good: &ImageFiles) {
    let dit = manifest("zi_dit.json");
    let dropped = drop_tensor(&dit, "final_layer.linear.weight");
    let incomplete = write(w.dir.path(), "incomplete.gguf", &dropped);
    let e = load_fails(w, "i", good, Some(incomplete));
    eprintln!("incomplete: {}", e.message);
    assert!(e.message.contains("not in model metadata"), "{e:?}");
    assert!(e.message.contains("final_layer.linear.weight"), "{e:?}");
    let reshaped = write(w.dir.path(), "reshaped.gguf", &reshape_first(&dit));
    let e = load_fails(w, "r", good, Some(reshaped));
    eprintln!("reshaped: {}", e.message);
    assert!(e.message.contains("wrong shape"), "{e:?}");
    assert_eq!(w.health().state, WorkerState::Empty);
}

/// A truncated file. stable-diffusion.cpp reads weights lazily: on its own it loads such a
/// file and then fails the first generation (`read tensor data failed`), or crashes with
/// SIGSEGV when the missing part was memory-mapped (seen with a truncated TAESD). The worker
/// reads the GGUF tensor table at load and refuses it there. And a file that is not a model
/// at all: stable-diffusion.cpp cannot tell its version and returns NULL.
fn truncated_and_garbage_files_fail_the_load(w: &Worker, good: &ImageFiles) {
    let bytes = std::fs::read(good.diffusion_model.as_ref().unwrap()).unwrap();
    std::fs::write(w.path("truncated.gguf"), &bytes[..bytes.len() / 2]).unwrap();
    let e = load_fails(w, "t", good, Some(w.path("truncated.gguf")));
    eprintln!("truncated: {}", e.message);
    assert!(
        e.message.contains("truncated.gguf") && e.message.contains("truncated GGUF"),
        "{e:?}"
    );

    std::fs::write(w.path("garbage.gguf"), b"this is not a model, not even a GGUF file").unwrap();
    let e = load_fails(w, "g", good, Some(w.path("garbage.gguf")));
    eprintln!("garbage: {}", e.message);
    assert!(
        e.message.contains("garbage.gguf"),
        "the warning that names the file: {e:?}"
    );
    assert_eq!(w.health().state, WorkerState::Empty);
}

/// The manifest without `name`.
fn drop_tensor(json: &str, name: &str) -> String {
    let start = json.find(&format!("\"{name}\"")).expect("tensor in the manifest");
    let end = start + json[start..].find(']').unwrap() + 1;
    let mut out = format!("{}{}", &json[..start], &json[end..]);
    // The comma that separated it from the next entry (or the previous one, for the last).
    if let Some(rest) = out[start..].strip_prefix(',') {
        out = format!("{}{}", &out[..start], rest);
    } else {
        let comma = out[..start].rfind(',').unwrap();
        out.replace_range(comma..comma + 1, "");
    }
    out
}

/// The manifest with its first tensor's first dimension doubled.
fn reshape_first(json: &str) -> String {
    let open = json.find('[').unwrap();
    let end = open + 1 + json[open + 1..].find([',', ']']).unwrap();
    let n: u64 = json[open + 1..end].trim().parse().unwrap();
    format!("{}{}{}", &json[..open + 1], n * 2, &json[end..])
}

/// SD1.x with the 4-channel TAESD (tensor names up to 83 characters: they load because
/// stable-diffusion.cpp builds its ggml with GGML_MAX_NAME=128), then with its full VAE,
/// decoded on the device, in tiles and on the CPU.
#[test]
fn sd1_with_taesd_and_with_its_full_vae_in_every_placement() {
    let w = Worker::start();
    let t = Instant::now();
    let tae_files = sd1(w.dir.path(), false);
    let vae_files = sd1(w.dir.path(), true);
    eprintln!("wrote the SD1 models in {:.1}s", t.elapsed().as_secs_f64());
    let req = image_request(VaePlacement::Gpu);

    let l = load(&w, "sd1-tae", tae_files, VaePlacement::Gpu);
    eprintln!("SD1 + TAESD load: {} ms, {:?}", l.load_ms, l.health.image);
    let run = generate(&w, &req);
    eprintln!("SD1 + TAESD: {:.2}s, {:?}", run.secs, run.peaks);
    assert_eq!(run.progress, [(1, 2), (2, 2)]);
    check_one_image(&run, &req);

    let l = load(&w, "sd1", vae_files, VaePlacement::Gpu);
    let image = l.health.image.clone().unwrap();
    eprintln!("SD1 + VAE load: {} ms, {image:?}", l.load_ms);
    let vae = image.components.iter().find(|c| c.name == "vae").expect("a full VAE");
    // 83,653,863 parameters: convolutions in f16, biases and norms in f32.
    assert!((160_000_000..170_000_000).contains(&vae.bytes), "{vae:?}");
    for c in &image.components {
        eprintln!("  {}: {:.2} MiB on {}", c.name, mib(c.bytes), c.device);
    }

    let mut pngs = Vec::new();
    for placement in [VaePlacement::Gpu, VaePlacement::Tiled, VaePlacement::Cpu] {
        let r = generate(
            &w,
            &ImageRequest {
                vae: placement,
                ..req.clone()
            },
        );
        eprintln!(
            "SD1 + VAE, {placement:?}: switch {} ms, {:.2}s, sampling {:.2} MiB in {} ms, decode {:.2} MiB in {} ms",
            r.switch_ms,
            r.secs,
            mib(r.peaks.sampling_bytes),
            r.peaks.sampling_ms,
            mib(r.peaks.vae_decode_bytes),
            r.peaks.vae_decode_ms
        );
        assert_eq!(r.peaks.vae, placement);
        assert!(r.peaks.vae_decode_bytes > 0, "{:?}", r.peaks);
        assert_eq!(r.switch_ms > 0, placement == VaePlacement::Cpu);
        pngs.push(check_one_image(&r, &req));
    }
    if l.health.device == "cpu" {
        // Everything runs on the CPU either way: the same bytes.
        assert_eq!(pngs[0], pngs[2]);
    }
}
