//! The commands that follow something as it happens: `events`, `chat` and `image`.

use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use base64::Engine;
use serde_json::{json, Value};

use crate::client::{Client, ClientError};
use crate::format;

/// One Server-Sent Event: its `event:` name and `data:` text.
pub struct Sse {
    pub event: String,
    pub data: String,
}

/// Reads events from an SSE body until it ends; `each` returns `false` to stop early.
pub fn read_sse(
    body: &mut dyn BufRead,
    mut each: impl FnMut(Sse) -> Result<bool, ClientError>,
) -> Result<(), ClientError> {
    let (mut event, mut data) = (String::new(), String::new());
    let mut line = String::new();
    loop {
        line.clear();
        if body.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let l = line.trim_end_matches(['\r', '\n']);
        if l.is_empty() {
            if !data.is_empty()
                && !each(Sse {
                    event: std::mem::take(&mut event),
                    data: std::mem::take(&mut data),
                })?
            {
                return Ok(());
            }
            event.clear();
        } else if let Some(v) = l.strip_prefix("event:") {
            event = v.trim().to_owned();
        } else if let Some(v) = l.strip_prefix("data:") {
            if !data.is_empty() {
                data.push('\n');
            }
            data.push_str(v.strip_prefix(' ').unwrap_or(v));
        }
    }
}

/// `vramctl events`: one line per event until the daemon closes the stream.
pub fn events(client: &Client, replay: usize, json_out: bool) -> Result<(), ClientError> {
    let mut resp = client.stream("GET", &format!("/v1/events?replay={replay}"), None)?;
    let mut out = std::io::stdout().lock();
    read_sse(&mut resp.body, |ev| {
        let v: Value = serde_json::from_str(&ev.data).unwrap_or(Value::Null);
        let line = if json_out {
            ev.data.clone()
        } else if ev.event == "lagged" {
            format!("(missed {} events: this client was too slow)", v["missed"])
        } else {
            // The daemon's own sentence (`text`), as the status page shows it; a daemon from
            // before `text` gets vramctl's wording.
            let what = v["text"].as_str().map_or_else(|| format::event(&v), str::to_owned);
            format!("{} {what}", format::clock(v["at"].as_f64().unwrap_or(0.0)))
        };
        writeln!(out, "{line}")?;
        out.flush()?;
        Ok(true)
    })?;
    Err(ClientError::Protocol(
        "vramd closed the event stream (it stopped)".into(),
    ))
}

/// `vramctl chat MODEL`: each line read is a user turn; the answer streams as it comes.
pub fn chat(
    client: &Client,
    model: &str,
    system: Option<&str>,
    max_tokens: Option<u32>,
    json_out: bool,
) -> Result<(), ClientError> {
    let mut messages: Vec<Value> = system
        .map(|s| json!({"role": "system", "content": s}))
        .into_iter()
        .collect();
    let stdin = std::io::stdin();
    let interactive = stdin.is_terminal();
    if interactive {
        eprintln!("chatting with {model}; an empty line or Ctrl-D ends");
    }
    let mut out = std::io::stdout().lock();
    loop {
        if interactive {
            eprint!("> ");
        }
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 || (interactive && line.trim().is_empty()) {
            return Ok(());
        }
        let prompt = line.trim_end_matches(['\r', '\n']);
        if prompt.is_empty() {
            continue;
        }
        messages.push(json!({"role": "user", "content": prompt}));
        let mut body = json!({"model": model, "messages": messages, "stream": true});
        if let Some(n) = max_tokens {
            body["max_tokens"] = n.into();
        }
        let mut resp = client.stream("POST", "/v1/chat/completions", Some(&body))?;
        let mut answer = String::new();
        let mut last = Value::Null;
        read_sse(&mut resp.body, |ev| {
            if ev.data == "[DONE]" {
                return Ok(false);
            }
            let v: Value = serde_json::from_str(&ev.data).map_err(|e| ClientError::Protocol(e.to_string()))?;
            if v["error"].is_object() {
                return Err(ClientError::Daemon {
                    status: 502,
                    code: v["error"]["code"].as_str().unwrap_or("error").into(),
                    message: v["error"]["message"].as_str().unwrap_or("the generation failed").into(),
                });
            }
            if let Some(piece) = v["choices"][0]["delta"]["content"].as_str() {
                answer.push_str(piece);
                if !json_out {
                    write!(out, "{piece}")?;
                    out.flush()?;
                }
            }
            last = v;
            Ok(true)
        })?;
        if json_out {
            let turn = json!({"role": "assistant", "content": answer, "finish_reason": last["choices"][0]["finish_reason"],
                              "usage": last["usage"], "vramd": last["vramd"]});
            writeln!(out, "{turn}")?;
        } else {
            writeln!(out)?;
        }
        messages.push(json!({"role": "assistant", "content": answer}));
    }
}

pub struct ImageArgs<'a> {
    pub model: &'a str,
    pub prompt: &'a str,
    pub output: &'a Path,
    pub size: Option<(u32, u32)>,
    pub steps: Option<u32>,
    pub seed: Option<i64>,
    pub negative: Option<&'a str>,
}

/// `vramctl image`: generates one image and writes the PNG, drawing a progress bar on
/// stderr (from `/sdapi/v1/progress`) while it runs.
pub fn image(client: &Client, a: &ImageArgs<'_>, json_out: bool) -> Result<(), ClientError> {
    let body = image_body(a);
    let (tx, rx) = mpsc::channel();
    let socket = client.socket.clone();
    std::thread::spawn(move || {
        let _ = tx.send(Client::new(&socket).post("/v1/images/generations", &body));
    });
    let v = wait_drawing_progress(client, &rx, a.model, !json_out)?;
    let png = write_png(&v, a.output)?;
    say_written(&v["vramd"], a.output, png.len(), json_out);
    Ok(())
}

/// The OpenAI images request for `a`.
fn image_body(a: &ImageArgs<'_>) -> Value {
    let mut body = json!({"model": a.model, "prompt": a.prompt, "n": 1});
    if let Some((w, h)) = a.size {
        body["size"] = format!("{w}x{h}").into();
    }
    if let Some(n) = a.steps {
        body["steps"] = n.into();
    }
    if let Some(seed) = a.seed {
        body["seed"] = seed.into();
    }
    if let Some(neg) = a.negative {
        body["negative_prompt"] = neg.into();
    }
    body
}

/// Waits for the request thread's answer; meanwhile, when `draw`, redraws `model`'s
/// progress bar on stderr every 150 ms, and finishes the bar's line at the end.
fn wait_drawing_progress(
    client: &Client,
    rx: &mpsc::Receiver<Result<Value, ClientError>>,
    model: &str,
    draw: bool,
) -> Result<Value, ClientError> {
    let mut drawn = false;
    let result = loop {
        match rx.recv_timeout(Duration::from_millis(150)) {
            Ok(r) => break r,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                break Err(ClientError::Protocol("the request thread died".into()))
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if let (true, Ok(p)) = (draw, client.get("/sdapi/v1/progress")) {
                    if p["state"]["job"] == model {
                        eprint!("\r{}", progress_line(&p));
                        drawn = true;
                    }
                }
            }
        }
    };
    match (&result, draw) {
        (Ok(_), true) => eprintln!("\r{}", format::progress(1.0, 0, 0, 0.0)),
        (Err(_), true) if drawn => eprintln!(),
        _ => {}
    }
    result
}

/// The progress bar for an A1111 `progress` answer.
fn progress_line(p: &Value) -> String {
    let st = &p["state"];
    format::progress(
        p["progress"].as_f64().unwrap_or(0.0),
        st["sampling_step"].as_u64().unwrap_or(0),
        st["sampling_steps"].as_u64().unwrap_or(0),
        p["eta_relative"].as_f64().unwrap_or(0.0),
    )
}

/// Decodes the answer's first image and writes it to `output`; returns the PNG.
fn write_png(v: &Value, output: &Path) -> Result<Vec<u8>, ClientError> {
    let b64 = v["data"][0]["b64_json"]
        .as_str()
        .ok_or_else(|| ClientError::Protocol("the answer has no image".into()))?;
    let png = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| ClientError::Protocol(format!("the image is not base64: {e}")))?;
    std::fs::write(output, &png).map_err(|e| ClientError::Protocol(format!("writing {}: {e}", output.display())))?;
    Ok(png)
}

/// Says what was written: a JSON line, or a sentence with the seed and where the VAE ran.
fn say_written(vramd: &Value, output: &Path, bytes: usize, json_out: bool) {
    if json_out {
        println!(
            "{}",
            json!({"file": output, "bytes": bytes, "seed": vramd["seeds"][0], "vae": vramd["vae"], "actions": vramd["actions"]})
        );
        return;
    }
    let mut line = format!(
        "wrote {} ({} bytes, seed {}",
        output.display(),
        bytes,
        vramd["seeds"][0]
    );
    match vramd["vae"].as_str() {
        Some("gpu") | None => {}
        Some(v) => line.push_str(&format!(
            ", VAE decode {}",
            if v == "cpu" { "on the CPU" } else { "in tiles" }
        )),
    }
    line.push(')');
    println!("{line}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_events_are_split_on_blank_lines() {
        let wire = b": comment\n\nid: 1\nevent: model_loaded\ndata: {\"a\":1}\n\ndata: [DONE]\n\ndata: never\n\n";
        let mut seen = Vec::new();
        read_sse(&mut &wire[..], |ev| {
            let done = ev.data == "[DONE]";
            seen.push((ev.event, ev.data));
            Ok(!done)
        })
        .unwrap();
        assert_eq!(
            seen,
            [
                ("model_loaded".to_owned(), "{\"a\":1}".to_owned()),
                (String::new(), "[DONE]".to_owned())
            ]
        );
    }
}
