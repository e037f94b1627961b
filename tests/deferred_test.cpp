// The rules of deferred validation (csrc/validation/deferred_queue.h, graph_slots.h, status_slot.h), run on
// the host with stand-ins for the GPU: a flag for a CUDA event, plain memory for a mapped pinned
// slot, a host call of publish_status for the graph's one-thread kernel. Built with a plain host
// compiler by tests/test_deferred.py (no torch, no nvcc, no GPU).
#include <atomic>
#include <cinttypes>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "validation/deferred_queue.h"
#include "validation/graph_slots.h"
#include "validation/status_slot.h"

using namespace validated_loss;

#include "host_check.h"

// A status record: first invalid target at `position` with `value`, `count` invalid in all.
static std::array<int64_t, kStatusSize> record(int64_t position, int64_t value, int64_t count) {
  return {position, value, count, -1, -1, 0};
}

static const std::array<int64_t, kStatusSize> kClean = record(-1, -1, 0);

// A copy on its way to the host: its buffer, and a flag standing in for the CUDA event.
struct StandIn {
  std::shared_ptr<std::array<int64_t, kStatusSize>> host;
  std::shared_ptr<bool> landed;
};

static StandIn queue_status(StatusQueue& q, const std::array<int64_t, kStatusSize>& status, int64_t call, bool landed) {
  StandIn s{std::make_shared<std::array<int64_t, kStatusSize>>(status), std::make_shared<bool>(landed)};
  CallSite site{{8}, 5, -100, {8, 5}, call, "train.py:" + std::to_string(call)};
  auto flag = s.landed;
  q.push(PendingStatus{std::shared_ptr<const int64_t>(s.host, s.host->data()), [flag] { return *flag; }, site});
  return s;
}

static void test_queue_waits_for_the_copy() {
  StatusQueue q;
  StandIn bad = queue_status(q, record(3, 9, 1), 1, false);
  CHECK(!q.take_first_error(), "an error whose copy has not landed is not read");
  CHECK(q.size() == 1, "it stays queued (%zu)", q.size());
  *bad.landed = true;
  auto found = q.take_first_error();
  CHECK(found && found->status[kStatusInvalidPosition] == 3 && found->status[kStatusInvalidValue] == 9,
        "reported once landed");
  CHECK(found && found->site.call == 1 && found->site.origin == "train.py:1" && !found->in_graph,
        "with the call it came from");
  CHECK(q.size() == 0 && !q.take_first_error(), "and reported once");
}

static void test_clean_entries_leave_when_landed() {
  StatusQueue q;
  queue_status(q, kClean, 1, true);
  StandIn later = queue_status(q, kClean, 2, false);
  CHECK(!q.take_first_error(), "clean statuses raise nothing");
  CHECK(q.size() == 1, "the landed one left, the other stays (%zu)", q.size());
  *later.landed = true;
  CHECK(!q.take_first_error() && q.size() == 0, "then it leaves too");
}

static void test_first_error_wins_and_clears_the_queue() {
  StatusQueue q;
  queue_status(q, kClean, 1, true);
  queue_status(q, record(0, 7, 2), 2, true);
  queue_status(q, record(5, -3, 1), 3, true);
  StandIn unlanded = queue_status(q, record(1, 99, 1), 4, false);
  auto found = q.take_first_error();
  CHECK(found && found->site.call == 2 && found->status[kStatusInvalidValue] == 7 &&
            found->status[kStatusInvalidCount] == 2,
        "the earliest queued error among the landed ones");
  CHECK(q.size() == 0, "everything queued is dropped with it, landed or not (%zu)", q.size());
  *unlanded.landed = true;
  CHECK(!q.take_first_error(), "a dropped entry never raises later");
}

static void test_a_landed_error_is_not_held_back_by_an_earlier_copy() {
  StatusQueue q;
  queue_status(q, kClean, 1, false);  // e.g. another stream, still running
  queue_status(q, record(2, 6, 1), 2, true);
  auto found = q.take_first_error();
  CHECK(found && found->site.call == 2, "checks never wait: the landed error is reported");
}

static void test_nonfinite_statuses_are_errors_too() {
  StatusQueue q;
  std::array<int64_t, kStatusSize> nonfinite = {-1, -1, 0, 4, 2, 1};
  queue_status(q, nonfinite, 1, true);
  auto found = q.take_first_error();
  CHECK(found && found->status[kStatusNonFiniteRow] == 4 && found->status[kStatusNonFiniteClass] == 2,
        "a non-finite logit is reported like a bad target");
}

static void test_clear() {
  StatusQueue q;
  queue_status(q, record(0, 8, 1), 1, true);
  q.clear();
  CHECK(q.size() == 0 && !q.take_first_error(), "cleared");
}

static void test_notes_name_the_call() {
  FoundError eager{record(0, 5, 1), CallSite{{4}, 5, -100, {4, 5}, 12, "train.py:57 in step"}, false};
  const std::string note = deferred_note(eager);
  CHECK(note.find("call #12 (train.py:57 in step)") != std::string::npos, "%s", note.c_str());
  CHECK(note.find("next loss call or backward") != std::string::npos, "%s", note.c_str());
  FoundError graph = eager;
  graph.in_graph = true;
  const std::string graph_note = deferred_note(graph);
  CHECK(graph_note.find("CUDA graph") != std::string::npos && graph_note.find("check_deferred()") != std::string::npos,
        "%s", graph_note.c_str());
  FoundError compiled = eager;
  compiled.site.origin = kCompiledOrigin;
  CHECK(deferred_note(compiled).find("torch.compile") != std::string::npos, "%s", deferred_note(compiled).c_str());
}

// ----------------------------------------------------------------------------------- graph slots

struct Slots {
  std::vector<std::array<int64_t, kSlotWords>> memory;
  explicit Slots(size_t n) : memory(n) {
    for (auto& s : memory) s.fill(0);
  }
  SlotRef ref(size_t i) { return SlotRef{memory[i].data(), memory[i].data()}; }
};

static void replay(const SlotRef& slot, const std::array<int64_t, kStatusSize>& status) {
  publish_status(slot.device, status.data());  // what the captured one-thread kernel does
}

static void test_slot_hand_off() {
  Slots m(1);
  SlotRef s = m.ref(0);
  std::array<int64_t, kStatusSize> out;
  replay(s, kClean);
  CHECK(!take_published(s.host, out.data()), "a clean replay publishes nothing");
  replay(s, record(4, 11, 2));
  replay(s, record(0, 12, 1));  // a later bad replay before the host looked
  CHECK(take_published(s.host, out.data()) && out[kStatusInvalidValue] == 11 && out[kStatusInvalidCount] == 2,
        "the first bad replay since the last look is kept whole (value %" PRId64 ")", out[kStatusInvalidValue]);
  CHECK(!take_published(s.host, out.data()), "taken once");
  replay(s, record(1, 13, 1));
  CHECK(take_published(s.host, out.data()) && out[kStatusInvalidValue] == 13, "the slot is free again after a take");
}

static void test_graph_sites() {
  Slots m(3);
  GraphSlots g;
  g.add_free_slots({m.ref(0), m.ref(1)});
  auto a = g.take_free_slot(), b = g.take_free_slot();
  CHECK(a && b && !g.take_free_slot(), "two free slots, then none");
  auto alive_a = std::make_shared<std::atomic<bool>>(true), alive_b = std::make_shared<std::atomic<bool>>(true);
  g.watch(GraphSite{*a, alive_a, CallSite{{8}, 5, -100, {8, 5}, 3, "a.py:1"}});
  g.watch(GraphSite{*b, alive_b, CallSite{{8}, 5, -100, {8, 5}, 4, "b.py:2"}});
  CHECK(!g.take_first_error() && g.watched() == 2, "nothing replayed yet");
  CHECK(g.needing_check() == 0, "live graphs with nothing published need no check");

  replay(*b, record(6, 40, 1));
  replay(*a, record(2, 30, 1));
  CHECK(g.needing_check() == 2, "two published records need a check (%zu)", g.needing_check());
  auto found = g.take_first_error();
  CHECK(found && found->in_graph && found->site.call == 3 && found->status[kStatusInvalidValue] == 30,
        "the first site in capture order wins");
  CHECK(!g.take_first_error(), "the other site's record was discarded with it");
  CHECK(g.watched() == 2, "sites stay watched while their graphs live");

  replay(*a, record(1, 31, 1));
  g.clear();
  CHECK(!g.take_first_error(), "clear discards unread records");

  replay(*b, record(7, 41, 1));
  alive_b->store(false);  // the graph was destroyed after that replay
  CHECK(g.needing_check() == 1, "a released graph's slot needs a check");
  found = g.take_first_error();
  CHECK(found && found->site.call == 4 && found->status[kStatusInvalidValue] == 41,
        "the last record of a released graph is still reported");
  CHECK(g.watched() == 1, "and its site is no longer watched (%zu)", g.watched());
  auto recycled = g.take_free_slot();
  CHECK(recycled && recycled->host == b->host, "its slot is free for the next capture");
  std::array<int64_t, kStatusSize> out;
  CHECK(recycled && !take_published(recycled->host, out.data()), "with no record in it");
}

int main() {
  test_queue_waits_for_the_copy();
  test_clean_entries_leave_when_landed();
  test_first_error_wins_and_clears_the_queue();
  test_a_landed_error_is_not_held_back_by_an_earlier_copy();
  test_nonfinite_statuses_are_errors_too();
  test_clear();
  test_notes_name_the_call();
  test_slot_hand_off();
  test_graph_sites();
  return check_summary();
}
