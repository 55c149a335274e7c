// Shared-memory arenas for the same-host transport.
//
// An arena is an anonymous memory file (memfd_create) mapped MAP_SHARED into
// the server and handed to JavaScript as an external ArrayBuffer. It has no
// name in any file system, so a crash of either side can never leave it
// behind: the kernel frees its pages when the last process mapping it exits
// or unmaps it. A client on the same host and user opens it through
// /proc/<server pid>/fd/<fd> (access to that link is granted to processes
// that may inspect the server, i.e. the same user) and maps it too.
//
//   arenaCreate(bytes) -> { buffer: ArrayBuffer, fd: number }
//   arenaCloseFd(fd)   the session closed: no new client may open it; the
//                      mapping lives on until its ArrayBuffer is collected
//                      (and, in a client, until the client unmaps it).
#include "arena.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "mapped.h"

namespace {

[[noreturn]] void Fail(Napi::Env env, const std::string& msg) { throw Napi::Error::New(env, msg); }

Napi::Value ArenaCreate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() != 1 || !info[0].IsNumber()) Fail(env, "arenaCreate(bytes): bytes must be a number");
  const double want = info[0].As<Napi::Number>().DoubleValue();
  if (!(want >= 1 && want <= 1ull << 46)) Fail(env, "arenaCreate: bytes out of range");
  const size_t bytes = static_cast<size_t>(want);
  const int fd = static_cast<int>(syscall(SYS_memfd_create, "mur-arena", MFD_CLOEXEC));
  if (fd < 0) Fail(env, std::string("memfd_create: ") + std::strerror(errno));
  if (ftruncate(fd, static_cast<off_t>(bytes)) != 0) {
    const int e = errno;
    close(fd);
    Fail(env, std::string("ftruncate: ") + std::strerror(e));
  }
  void* addr = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (addr == MAP_FAILED) {
    const int e = errno;
    close(fd);
    Fail(env, std::string("mmap: ") + std::strerror(e));
  }
  Napi::ArrayBuffer buffer = mur::MappedBuffer(env, addr, bytes, bytes);
  Napi::Object out = Napi::Object::New(env);
  out.Set("buffer", buffer);
  out.Set("fd", fd);
  return out;
}

Napi::Value ArenaCloseFd(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() != 1 || !info[0].IsNumber()) Fail(env, "arenaCloseFd(fd): fd must be a number");
  const int fd = info[0].As<Napi::Number>().Int32Value();
  if (close(fd) != 0) Fail(env, std::string("close: ") + std::strerror(errno));
  return env.Undefined();
}

}  // namespace

namespace mur {

void InitArena(Napi::Env env, Napi::Object exports) {
  exports.Set("arenaCreate", Napi::Function::New(env, ArenaCreate));
  exports.Set("arenaCloseFd", Napi::Function::New(env, ArenaCloseFd));
}

}  // namespace mur
