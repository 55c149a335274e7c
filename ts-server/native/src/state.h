// Memory the native engine owns, on huge pages where large (state.cc).
#pragma once
#include <napi.h>

namespace mur {
void InitState(Napi::Env env, Napi::Object exports);
}
