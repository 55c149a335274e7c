#!/usr/bin/env bash
# The BLAS measurement behind the native engine's choice (docs/engine.md,
# "Matrix products"): one Muon Newton-Schulz iteration through OpenBLAS
# (Debian's pthread build, its own threads) and Eigen (with the addon's flags,
# and with -march=native; OpenMP threads), on 1 and 2 threads.
set -euo pipefail
cd "$(dirname "$0")/../ts-server/native/bench"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
inc=/usr/include/x86_64-linux-gnu/openblas-pthread
lib=/usr/lib/x86_64-linux-gnu/openblas-pthread
g++ -std=c++17 -O3 -ffp-contract=off -I"$inc" ns_blas.cc -o "$out/openblas" -L"$lib" -lopenblas -Wl,-rpath,"$lib"
g++ -std=c++17 -O3 -ffp-contract=off -fopenmp -DUSE_EIGEN -I/usr/include/eigen3 ns_blas.cc -o "$out/eigen"
g++ -std=c++17 -O3 -march=native -fopenmp -DUSE_EIGEN -I/usr/include/eigen3 ns_blas.cc -o "$out/eigen-native"
"$out/openblas"
"$out/eigen"
echo "(eigen with -march=native:)"
"$out/eigen-native"
