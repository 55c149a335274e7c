{
  "targets": [
    {
      "target_name": "mur_native",
      "sources": ["src/addon.cc", "src/arena.cc", "src/kernels.cc", "src/kernels-bf16.cc", "src/kernels-q8.cc", "src/q8map.cc", "src/lane.cc", "src/limit.cc", "src/newton_schulz.cc", "src/transcendental.cc", "src/pool.cc", "src/state.cc", "src/widen.cc"],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")", "src", "/usr/include/x86_64-linux-gnu/openblas-pthread"],
      "defines": ["NAPI_VERSION=8", "NAPI_CPP_EXCEPTIONS"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions", "-O2", "-O3"],
      "cflags_cc": ["-std=c++17", "-O3", "-ffp-contract=off", "-fexceptions", "-Wall", "-Wextra", "-Wno-unused-parameter"],
      "libraries": ["-lhwy", "-lpthread", "-L/usr/lib/x86_64-linux-gnu/openblas-pthread", "-lopenblas", "-Wl,-rpath,/usr/lib/x86_64-linux-gnu/openblas-pthread"]
    }
  ]
}
