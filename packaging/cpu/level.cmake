# CMake toolchain file: stable-diffusion.cpp's ggml for one x86-64 level, instead of the
# build machine's CPU. ggml's default outside distro tooling is GGML_NATIVE (-march=native),
# and inside it (SOURCE_DATE_EPOCH set) plain x86-64 with every fast path off. Its CPU code
# in stable-diffusion.cpp cannot be split into run-time modules (diffusion-rs-sys links ggml
# statically), so packaging/build compiles the image worker once per level with this file as
# CMAKE_TOOLCHAIN_FILE and VRAMD_CPU_LEVEL set, and the daemon starts the best one the CPU
# runs (vramd_protocol::cpu::best_variant). The levels are the psABI's, as ggml's own
# variants spell them: x86-64 = "x64", -v2 = "sse42", -v3 = "haswell", -v4 = "skylakex".
#
# .cargo/config.toml names it for every cargo build with the baseline level, so what the tests
# run is what every package holds; cargo's [env] reaches llama.cpp's CMake too, which this
# file leaves alone (its CPU code is in run-time modules, src/backends.rs of the LLM worker),
# as it does CMake's own test projects.
if(NOT EXISTS "${CMAKE_SOURCE_DIR}/include/stable-diffusion.h")
  return()
endif()
set(_vramd_level "$ENV{VRAMD_CPU_LEVEL}")
if(_vramd_level STREQUAL "native")
  return() # ggml's own default: this machine's CPU (benches/suite.py's local reference)
elseif(_vramd_level STREQUAL "x86-64")
  set(_vramd_on "")
elseif(_vramd_level STREQUAL "x86-64-v2")
  set(_vramd_on SSE42)
elseif(_vramd_level STREQUAL "x86-64-v3")
  set(_vramd_on SSE42 AVX F16C FMA AVX2 BMI2)
elseif(_vramd_level STREQUAL "x86-64-v4")
  set(_vramd_on SSE42 AVX F16C FMA AVX2 BMI2 AVX512)
else()
  message(FATAL_ERROR "VRAMD_CPU_LEVEL must be x86-64, x86-64-v2, x86-64-v3, x86-64-v4 or native, not '${_vramd_level}'")
endif()
set(GGML_NATIVE OFF CACHE BOOL "vramd: one x86-64 level, not the build machine" FORCE)
foreach(_f SSE42 AVX AVX_VNNI AVX2 BMI2 FMA F16C AVX512 AVX512_VBMI AVX512_VNNI AVX512_BF16 AMX_TILE AMX_INT8 AMX_BF16)
  if(_f IN_LIST _vramd_on)
    set(GGML_${_f} ON CACHE BOOL "vramd: ${_vramd_level}" FORCE)
  else()
    set(GGML_${_f} OFF CACHE BOOL "vramd: ${_vramd_level}" FORCE)
  endif()
endforeach()
