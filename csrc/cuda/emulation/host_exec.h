// The CPU emulation's models of how a block runs (tests only; CPU builds only): HostExec runs the threads of a
// phase one after the other in a shuffled order, and EmulatedCopies lands each cp.async copy as late as the
// PTX ISA allows. The warp model of ldmatrix and mma is in warp_model.h. A missing barrier, an early read of
// a copy in flight or a copy into a stage still being read changes the results, which the tests compare.
#pragma once

#if defined(__CUDACC__)
#error "emulation/host_exec.h is the CPU emulation's: the CUDA build runs DeviceExec (tile_common.cuh)"
#endif

#include "../tile_common.cuh"

#include <cstring>
#include <deque>
#include <vector>

namespace fastshap {
namespace tile {

// The CPU emulation's model of cp.async, as late as the PTX ISA lets a copy land: from its issue the
// destination holds garbage (NaN bytes in every floating-point type), and its bytes land when the issuing
// thread's cp.async.wait_group covers its commit group; a copy never committed or never waited for never
// lands. So a read of a stage before the wait for its group, or a copy issued into a stage that a thread
// still reads, shows up as NaN in the results. (The copy's source is read at the issue: it is input that no
// kernel writes.)
class EmulatedCopies {
 public:
  void begin_block() {  // copies a block leaves in flight die with its shared memory
    for (Thread& t : threads_) {
      t.open.clear();
      t.committed.clear();
    }
  }
  void set_thread(int tid) { current_ = tid; }
  void issue(void* dst, const void* src, bool valid) {
    Copy c{static_cast<unsigned char*>(dst), {}};
    if (reinterpret_cast<uintptr_t>(dst) % 16 != 0 || (valid && reinterpret_cast<uintptr_t>(src) % 16 != 0)) {
      std::abort();  // cp.async of 16 bytes needs both addresses 16-byte aligned
    }
    if (valid) std::memcpy(c.bytes, src, sizeof c.bytes);  // else zeros, as cp.async's src-size 0
    std::memset(dst, 0xff, sizeof c.bytes);
    threads_[current_].open.push_back(c);
  }
  void commit() {
    Thread& t = threads_[current_];
    t.committed.push_back(std::move(t.open));
    t.open.clear();
  }
  void wait(int pending) {  // lands the oldest groups until at most `pending` are in flight
    Thread& t = threads_[current_];
    while (static_cast<int>(t.committed.size()) > pending) {
      for (const Copy& c : t.committed.front()) std::memcpy(c.dst, c.bytes, sizeof c.bytes);
      t.committed.pop_front();
    }
  }

 private:
  struct Copy {
    unsigned char* dst;
    unsigned char bytes[16];
  };
  struct Thread {
    std::vector<Copy> open;
    std::deque<std::vector<Copy>> committed;
  };
  Thread threads_[kThreads];
  int current_ = 0;
};
// The model the emulated phase now running uses (set by HostExec::each).
inline thread_local EmulatedCopies* emulated_copies = nullptr;

// Runs a phase's threads one after the other, in an order shuffled anew for each phase (a fixed seed, so
// runs repeat): a thread that reads in one phase what another thread of the phase writes (a missing barrier)
// sees the write in some phases and not in others, and the results change.
struct HostExec {
  EmulatedCopies copies;
  uint64_t state = 0x9e3779b97f4a7c15ull;
  int order[kThreads];

  HostExec() {
    for (int t = 0; t < kThreads; ++t) order[t] = t;
  }
  void begin_block() { copies.begin_block(); }
  template <class F>
  void each(F&& f) {
    for (int i = kThreads - 1; i > 0; --i) std::swap(order[i], order[next() % static_cast<uint64_t>(i + 1)]);
    EmulatedCopies* const outer = emulated_copies;
    emulated_copies = &copies;
    for (int t : order) {
      copies.set_thread(t);
      f(t);
    }
    emulated_copies = outer;
  }
  static void add(double* total, double value) { *total += value; }
  template <typename In>
  struct Mma;  // the warp model: warp_model.h

 private:
  uint64_t next() {  // xorshift64*
    state ^= state >> 12;
    state ^= state << 25;
    state ^= state >> 27;
    return state * 0x2545f4914f6cdd1dull;
  }
};

}  // namespace tile
}  // namespace fastshap
