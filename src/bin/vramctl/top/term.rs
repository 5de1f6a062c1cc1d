//! The terminal, by hand: its size, the alternate screen with the cursor hidden while `top`
//! runs, typed keys neither echoed nor waiting for Enter, and the signals that end it. Every
//! change is undone by [`Screen`]'s `Drop`, which runs on a normal exit, on a panic, and after
//! Ctrl-C or SIGTERM (they only set a flag the loop reads).

use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};

/// The terminal's columns, and rows when known.
#[derive(Clone, Copy, Debug)]
pub struct Size {
    pub cols: usize,
    pub rows: Option<usize>,
}

/// Columns when nothing says otherwise (a pipe, with `COLUMNS` unset).
const DEFAULT_COLS: usize = 80;

/// Asks stdout's terminal (`TIOCGWINSZ`); else `COLUMNS` and `LINES`, as shells export them;
/// else 80 columns and no row limit.
pub fn size() -> Size {
    // SAFETY: TIOCGWINSZ writes one `winsize` into `ws`, which lives on this stack frame.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) } == 0;
    if ok && ws.ws_col > 0 {
        return Size {
            cols: usize::from(ws.ws_col),
            rows: (ws.ws_row > 0).then_some(usize::from(ws.ws_row)),
        };
    }
    let env = |name: &str| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .filter(|&n| n > 0)
    };
    Size {
        cols: env("COLUMNS").unwrap_or(DEFAULT_COLS),
        rows: env("LINES"),
    }
}

static STOP: AtomicBool = AtomicBool::new(false);
static RESIZED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

extern "C" fn on_resize(_: libc::c_int) {
    RESIZED.store(true, Ordering::SeqCst);
}

/// Ctrl-C, SIGTERM and a closed terminal (SIGHUP) ask the loop to stop, so the terminal is
/// restored before exiting; a resize asks for a redraw.
pub fn catch_signals() {
    let handlers: [(libc::c_int, extern "C" fn(libc::c_int)); 4] = [
        (libc::SIGINT, on_stop),
        (libc::SIGTERM, on_stop),
        (libc::SIGHUP, on_stop),
        (libc::SIGWINCH, on_resize),
    ];
    for (sig, handler) in handlers {
        // SAFETY: the handlers only store to atomics, which is async-signal-safe.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = handler as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

pub fn stop_requested() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// Whether the terminal was resized since the last call.
pub fn resized() -> bool {
    RESIZED.swap(false, Ordering::SeqCst)
}

/// The screen `top` draws on; dropping it gives the terminal back as it was.
pub struct Screen {
    /// stdin's settings before, when stdin is a terminal whose echo was turned off.
    saved: Option<libc::termios>,
}

impl Screen {
    /// Switches to the alternate screen and hides the cursor; stops stdin's terminal from
    /// echoing keys and from waiting for Enter (signals still come from Ctrl-C).
    pub fn enter() -> io::Result<Screen> {
        let screen = Screen { saved: quiet_stdin() };
        let mut out = io::stdout().lock();
        out.write_all(b"\x1b[?1049h\x1b[?25l\x1b[2J")?;
        out.flush()?;
        Ok(screen)
    }

    /// Draws `lines` from the top left over the previous frame, clearing what it left.
    pub fn draw(&mut self, lines: &[String]) -> io::Result<()> {
        let mut text = String::from("\x1b[H");
        for (i, line) in lines.iter().enumerate() {
            if i > 0 {
                text.push_str("\r\n");
            }
            text.push_str(line);
            text.push_str("\x1b[K");
        }
        text.push_str("\x1b[J");
        let mut out = io::stdout().lock();
        out.write_all(text.as_bytes())?;
        out.flush()
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        let mut out = io::stdout().lock();
        let _ = out.write_all(b"\x1b[?25h\x1b[?1049l");
        let _ = out.flush();
        if let Some(saved) = self.saved {
            // SAFETY: restores the settings read from the same descriptor in `quiet_stdin`.
            unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &saved) };
        }
    }
}

/// Turns off echo and line buffering on stdin's terminal; returns the settings to restore,
/// or `None` when stdin is not a terminal.
fn quiet_stdin() -> Option<libc::termios> {
    // SAFETY: tcgetattr fills `saved`, which lives on this stack frame; tcsetattr reads a copy.
    unsafe {
        let mut saved: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(libc::STDIN_FILENO, &mut saved) != 0 {
            return None;
        }
        let mut quiet = saved;
        quiet.c_lflag &= !(libc::ECHO | libc::ICANON);
        quiet.c_cc[libc::VMIN] = 1;
        quiet.c_cc[libc::VTIME] = 0;
        (libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &quiet) == 0).then_some(saved)
    }
}

/// Calls `quit` when `q` is typed (on a thread: reading stdin blocks).
pub fn on_q(quit: impl FnOnce() + Send + 'static) {
    std::thread::spawn(move || {
        let mut byte = [0u8; 1];
        let mut stdin = io::stdin().lock();
        while let Ok(1) = stdin.read(&mut byte) {
            if byte[0].eq_ignore_ascii_case(&b'q') {
                quit();
                return;
            }
        }
    });
}
