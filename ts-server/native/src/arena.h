// Shared-memory arenas (memfd) for the same-host transport; see arena.cc.
#pragma once
#include <napi.h>

namespace mur {
void InitArena(Napi::Env env, Napi::Object exports);
}
