// WeakRegistry: a thread-safe map from keys to objects it does not own.
//
// An entry lives as long as its object: Find sees only live objects, and
// entries whose objects are gone are dropped whenever one is added (so a
// process that makes and drops channels forever does not grow the map).
// Used for channel -> ClientCore (GetChannelStats) and session key ->
// SessionLink (channels that share a session).
#ifndef SHMGRPC_TRANSPORT_WEAK_REGISTRY_H_
#define SHMGRPC_TRANSPORT_WEAK_REGISTRY_H_

#include <iterator>
#include <map>
#include <memory>
#include <mutex>

namespace shmgrpc::transport {

template <typename Key, typename T>
class WeakRegistry {
 public:
  // The live object under `key`, or nullptr.
  std::shared_ptr<T> Find(const Key& key) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = entries_.find(key);
    return it == entries_.end() ? nullptr : it->second.lock();
  }

  // The live object under `key`, or else `make()`'s, registered under it;
  // `*made` says which. `make` runs under the registry's lock.
  template <typename Make>
  std::shared_ptr<T> FindOrAdd(const Key& key, Make make, bool* made) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = entries_.find(key);
    if (it != entries_.end()) {
      if (std::shared_ptr<T> live = it->second.lock()) {
        *made = false;
        return live;
      }
    }
    std::shared_ptr<T> added = make();
    AddLocked(key, added);
    *made = true;
    return added;
  }

  void Add(const Key& key, const std::shared_ptr<T>& object) {
    std::lock_guard<std::mutex> lock(mu_);
    AddLocked(key, object);
  }

 private:
  void AddLocked(const Key& key, const std::shared_ptr<T>& object) {
    for (auto it = entries_.begin(); it != entries_.end();) {
      it = it->second.expired() ? entries_.erase(it) : std::next(it);
    }
    entries_[key] = object;
  }

  std::mutex mu_;
  std::map<Key, std::weak_ptr<T>> entries_;
};

}  // namespace shmgrpc::transport

#endif  // SHMGRPC_TRANSPORT_WEAK_REGISTRY_H_
