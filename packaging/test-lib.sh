# Shared by packaging/test-deb, test-rpm and test-arch (sourced, not run): the checks every
# format must pass once it is installed into a throw-away root. Each test sets `tmp` (its
# scratch folder, removed on exit) and `root` (the installed tree) before calling these.

fail() { echo "packaging/${TEST_NAME:-test}: FAIL: $*" >&2; [ -n "${log:-}" ] && [ -f "$log" ] && tail -30 "$log" >&2; exit 1; }
ok() { echo "  ok: $*"; }

pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$tmp"; }

# need_root: re-runs the calling script as root (dpkg/rpm/pacman --root and the chowns of
# systemd-tmpfiles in the test root need it).
need_root() {
  [ "$(id -u)" -eq 0 ] && return
  sudo -n true 2>/dev/null || { echo "packaging/${TEST_NAME:-test}: needs root or password-less sudo" >&2; exit 1; }
  exec sudo -n env "PATH=$PATH" "CARGO_TARGET_DIR=$CARGO_TARGET_DIR" "CARGO_HOME=${CARGO_HOME:-$HOME/.cargo}" "RUSTUP_HOME=${RUSTUP_HOME:-$HOME/.rustup}" "$@"
}

# build_for_packages: what the package tests package, built: the workspace as scripts/test
# built it (a no-op there; the image worker is x86-64-v3, .cargo/config.toml) and the
# packages' baseline image worker (x86-64), which nothing else builds: stable-diffusion.cpp
# once in the release profile (packaging/build finds it in $CARGO_TARGET_DIR/sd-x86-64).
build_for_packages() {
  # llama-cpp-sys-2's dangling library links make its build script fail should it run again.
  find "$CARGO_TARGET_DIR/debug" -maxdepth 2 -name 'lib*.so' -xtype l -delete 2>/dev/null || true
  cargo build --workspace --bins --examples --locked -q
  packaging/build-sd-level x86-64 --release -q
}

# want_entries LISTING MODE PATH...: every PATH is in LISTING ("mode owner path" lines, paths
# relative without the leading ./ or /) with MODE and owner root/root.
want_entries() {
  local listing=$1 mode=$2 line f; shift 2
  for f in "$@"; do
    line=$(grep -E "^$mode root/root $f\$" <<<"$listing") \
      || fail "missing or wrong mode/owner: $f (want $mode root/root); got: $(grep -E " $f\$" <<<"$listing" || echo absent)"
    ok "$line"
  done
}

# check_sysusers_tmpfiles: the vramd user and group, and /var/lib/vramd(/models) owned by it.
check_sysusers_tmpfiles() {
  grep -q '^vramd:' "$root/etc/passwd" || fail "no user vramd in the root's /etc/passwd"
  grep -q '^vramd:' "$root/etc/group" || fail "no group vramd in the root's /etc/group"
  ok "user and group vramd"
  # The owner is the root's vramd (its uid in the root's /etc/passwd), not the host's.
  local uid; uid=$(awk -F: '$1 == "vramd" {print $3}' "$root/etc/passwd")
  [ "$(stat -c '%a %u' "$root/var/lib/vramd")" = "750 $uid" ] || fail "/var/lib/vramd: $(stat -c '%a %u' "$root/var/lib/vramd" 2>&1), want 750 $uid"
  [ -d "$root/var/lib/vramd/models" ] || fail "no /var/lib/vramd/models"
  ok "/var/lib/vramd (0750 vramd) and models/"
}

# verify_units UNITDIR: systemd-analyze verify on the installed units (UNITDIR relative to
# the root: lib/systemd/system or usr/lib/systemd/system). The root has no systemd of its own
# for --root=: verify copies whose ExecStart points into the root (as tests/it/systemd_units.rs
# does); Documentation=man:vramd(8) is looked up in the root's man pages when man(1) is here.
verify_units() {
  local unitdir=$1 units=$tmp/units u man=no
  mkdir -p "$units/user"
  for u in vramd.socket vramd-tcp.socket vramd.service; do
    sed "s|/usr/bin/|$root/usr/bin/|" "$root/$unitdir/$u" >"$units/$u"
  done
  sed "s|/usr/bin/|$root/usr/bin/|" "$root/usr/lib/systemd/user/vramd-notify.service" >"$units/user/vramd-notify.service"
  command -v man >/dev/null && man=yes
  log=$tmp/verify.log
  (cd "$units" && MANPATH=$root/usr/share/man systemd-analyze verify --man=$man vramd.socket vramd-tcp.socket vramd.service) >"$log" 2>&1 \
    || fail "systemd-analyze verify: $(cat "$log")"
  mkdir -p -m 0700 "$tmp/xdg"
  (cd "$units/user" && XDG_RUNTIME_DIR=$tmp/xdg MANPATH=$root/usr/share/man systemd-analyze verify --user --man=$man vramd-notify.service) >"$log" 2>&1 \
    || fail "systemd-analyze verify --user vramd-notify.service: $(cat "$log")"
  [ ! -s "$log" ] || cat "$log"
  ok "vramd.socket vramd-tcp.socket vramd.service vramd-notify.service (man pages checked: $man)"
}

# run_installed WORKER_DIR: runs the installed vramd under systemd-socket-activate with the
# installed /etc/vramd/vramd.toml plus two tiny models (paths moved into the test folder, the
# budget backend, no D-Bus, workers from WORKER_DIR inside the root): a chat request and an
# image request through the socket, then the installed `vramctl status`.
run_installed() {
  local workers=$root/$1 run=$tmp/run sock chat img status
  log=$tmp/check.log
  "$root/usr/bin/vramd" --check-config --config "$root/etc/vramd/vramd.toml" >"$log" 2>&1 || fail "the installed vramd.toml is invalid"
  grep -q 'backend = "auto"' "$log" || fail "installed vramd.toml: backend is not auto"
  ok "installed /etc/vramd/vramd.toml is valid (backend auto, no models)"
  "$CARGO_TARGET_DIR/debug/examples/tiny-models" "$tmp/models" >/dev/null || fail "writing the tiny models"
  cp "$tmp/models/tiny-models.toml" "$root/etc/vramd/models.d/tiny.toml"
  mkdir -p "$run"
  sed -e '/^worker_dir = /d' \
    -e "s|^\[daemon\]|[daemon]\nstate_dir = \"$run/state\"\nruntime_dir = \"$run/workers\"\nworker_dir = \"$workers\"\nworker_start_timeout = \"60s\"|" \
    -e 's|^backend = "auto"|backend = "budget"|' -e 's|^idle_exit = .*|idle_exit = "0"|' -e 's|^bus = "system"|bus = "none"|' \
    "$root/etc/vramd/vramd.toml" >"$root/etc/vramd/vramd-test.toml"
  "$root/usr/bin/vramd" --check-config --config "$root/etc/vramd/vramd-test.toml" >"$log" 2>&1 || fail "test config: $(cat "$log")"
  grep -q 'models.d/tiny.toml' "$log" || fail "models.d drop-in not read"
  sock=$run/vramd.sock
  log=$run/vramd.log
  systemd-socket-activate -l "$sock" --fdname=api -E "VRAMD_CONFIG=$root/etc/vramd/vramd-test.toml" -E RUST_LOG=info \
    "$root/usr/bin/vramd" </dev/null >/dev/null 2>"$log" &
  pid=$!
  for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.1; done
  [ -S "$sock" ] || fail "systemd-socket-activate did not listen on $sock"
  api() { curl -sS --max-time 300 --unix-socket "$sock" -H 'Content-Type: application/json' "$@"; }
  chat=$(api -d '{"model":"chat","messages":[{"role":"user","content":"Hello"}],"max_tokens":4,"temperature":0}' http://vramd/v1/chat/completions) \
    || fail "chat request"
  python3 -c 'import json,sys; v=json.loads(sys.argv[1]); assert v["object"]=="chat.completion", v; assert v["choices"][0]["message"]["role"]=="assistant", v; assert v["usage"]["completion_tokens"]>=1, v' "$chat" \
    || fail "chat answer: $chat"
  ok "POST /v1/chat/completions (chat): $(python3 -c 'import json,sys; v=json.loads(sys.argv[1]); print(v["usage"])' "$chat")"
  img=$(api -d '{"model":"zimage","prompt":"a red cube","size":"64x64","steps":1,"seed":1}' http://vramd/v1/images/generations) \
    || fail "image request"
  python3 -c 'import json,sys,base64; v=json.loads(sys.argv[1]); p=base64.b64decode(v["data"][0]["b64_json"]); assert p[:8]==b"\x89PNG\r\n\x1a\n", v; assert int.from_bytes(p[16:20],"big")==64, v' "$img" \
    || fail "image answer: ${img:0:400}"
  ok "POST /v1/images/generations (zimage): a 64x64 PNG"
  status=$("$root/usr/bin/vramctl" --socket "$sock" status) || fail "vramctl status"
  grep -q chat <<<"$status" && grep -q zimage <<<"$status" || fail "vramctl status lacks the models: $status"
  ok "installed vramctl status:"; sed 's/^/      /' <<<"$status"
  grep -q "$workers" "$log" || fail "workers not from $workers"
  kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
  ok "workers ran from $workers"
  rm "$root/etc/vramd/vramd-test.toml" "$root/etc/vramd/models.d/tiny.toml"
}

# run_on_westmere WORKER_DIR: run_installed again with every installed worker run by
# `qemu-x86_64 -cpu Westmere` (2010: SSE4.2, no AVX), through wrappers of the workers' names:
# the packaged workers must run a chat and an image on a CPU without AVX, not die of an
# illegal instruction. The LLM worker must have loaded llama.cpp's SSE4.2 module; the
# image worker is the baseline build (vramd starts the plain name on a CPU it cannot read).
run_on_westmere() {
  command -v qemu-x86_64 >/dev/null || fail "qemu-x86_64 missing (apt-get install qemu-user)"
  local real=$root/$1 wrap=$root/westmere-workers w
  mkdir -p "$wrap"
  for w in vramd-llm-worker vramd-sd-worker; do
    printf '#!/bin/sh\nexec qemu-x86_64 -cpu Westmere %s "$@"\n' "$real/$w" >"$wrap/$w"
    chmod 755 "$wrap/$w"
  done
  run_installed westmere-workers
  grep -q 'illegal\|SIGILL\|signal 4' "$log" && fail "a worker died of an illegal instruction under -cpu Westmere"
  local llm; llm=$(grep -o 'ggml-cpu-[a-z0-9_.]* from [^ ",]*' "$log" | head -1)
  if readelf -d "$real/vramd-llm-worker" | grep -q 'NEEDED.*\[libllama'; then
    [[ "$llm" == ggml-cpu-sse42* ]] || fail "under -cpu Westmere the LLM worker loaded '${llm:-no CPU module}', not ggml-cpu-sse42"
  fi
  ok "under qemu-x86_64 -cpu Westmere: a chat (${llm:-llama.cpp linked in}) and an image (the baseline image worker)"
  rm -rf "$wrap"
}

# lint_clean TOOL OUTPUT ALLOWED...: TOOL's OUTPUT has no error and no warning other than
# the ALLOWED tags (each explained in packaging/README.md).
lint_clean() {
  local tool=$1 output=$2 tag; shift 2
  local issues; issues=$(grep -E '^[A-Za-z0-9_.+-]*:? ?[EW]: ' <<<"$output" || true)
  for tag in "$@"; do issues=$(grep -v -- " $tag\b" <<<"$issues" || true); done
  [ -z "$issues" ] || fail "$tool reports what packaging/README.md does not explain:
$issues"
  ok "$tool: no errors; warnings left: ${*:-none} (explained in packaging/README.md)"
}
